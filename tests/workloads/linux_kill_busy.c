/* Signals to a busy process (one that makes no system call): a handled SIGUSR1 and a
 * default-action SIGTERM must reach it at once, not at its next system call (it has
 * none); so must signals to a process asleep (nanosleep: EINTR with the time left) or
 * blocked on a futex (pthread_cond_wait). The parent reports whether each arrived
 * within 2 seconds. */
#include <pthread.h>
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static void on_usr1(int s) { (void)s; got = 1; }

/* Spins with no system call until the handler ran, or gives up after ~20 s of work. */
static int spin(void) {
    for (volatile unsigned long i = 0; i < (1UL << 36); i++)
        if (got) return 7;
    return 99;
}

/* Sleeps 100 s at most; the handler's signal ends the sleep with EINTR. */
static int nap(void) {
    struct timespec t = {100, 0}, left = {0, 0};
    int r = nanosleep(&t, &left);
    return r == -1 && got && left.tv_sec > 50 ? 8 : 98;
}

static void exit_9(int s) { (void)s; _exit(9); }

/* Waits on a condition variable nobody signals (a futex wait, which glibc resumes
 * after a handler: this one ends the process). */
static int block_on_futex(void) {
    static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    if (got == 0 && signal(SIGUSR1, SIG_IGN) != SIG_DFL) signal(SIGUSR1, exit_9);
    pthread_mutex_lock(&m);
    while (!got) pthread_cond_wait(&c, &m);
    return 9;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void run(int sig, int handled, int (*body)(void)) {
    int p[2];
    if (pipe(p) != 0) exit(1);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (handled) signal(SIGUSR1, on_usr1);
        close(p[0]);
        write(p[1], "r", 1); /* ready: the handler is in place */
        _exit(body());
    }
    close(p[1]);
    char c;
    read(p[0], &c, 1);
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL); /* let it get busy */
    double t0 = now();
    kill(pid, sig);
    int st;
    waitpid(pid, &st, 0);
    double dt = now() - t0;
    if (WIFEXITED(st))
        printf("signal %d: child exited %d, in time %s\n", sig, WEXITSTATUS(st), dt < 2 ? "yes" : "NO");
    else
        printf("signal %d: child killed by %d, in time %s\n", sig, WTERMSIG(st), dt < 2 ? "yes" : "NO");
}

int main(void) {
    run(SIGUSR1, 1, spin);
    run(SIGTERM, 0, spin);
    run(SIGUSR1, 1, nap);
    run(SIGTERM, 0, nap);
    run(SIGUSR1, 1, block_on_futex);
    run(SIGTERM, 0, block_on_futex);
    return 0;
}
