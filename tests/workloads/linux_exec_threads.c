/* execve from a threaded process: Linux ends every other thread (spinning, blocked on
 * a futex, in a read, asleep) and the calling thread goes on as the process, with the
 * process id, even when it was not the main thread.
 *   linux_exec_threads            main thread execs with 4 other threads alive
 *   ... after-main PID            checks, then a second thread execs
 *   ... after-thread PID          checks, exits 3 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long spins;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int pipefd[2];
static char self_path[4096];

static void *spin(void *a) { (void)a; for (;;) spins++; return NULL; }
static void *wait_cond(void *a) {
    (void)a;
    pthread_mutex_lock(&mu);
    for (;;) pthread_cond_wait(&cv, &mu);
    return NULL;
}
static void *wait_read(void *a) { (void)a; char c; for (;;) read(pipefd[0], &c, 1); return NULL; }
static void *wait_sleep(void *a) { (void)a; for (;;) sleep(100); return NULL; }

static void exec_self(const char *mode) {
    char pid[32];
    snprintf(pid, sizeof pid, "%d", getpid());
    char *argv[] = {self_path, (char *)mode, pid, NULL};
    fflush(stdout);
    execv(self_path, argv);
    perror("execv");
    exit(1);
}

static void *exec_from_thread(void *a) {
    (void)a;
    exec_self("after-thread");
    return NULL;
}

static void check(const char *mode, const char *old_pid) {
    int same = atoi(old_pid) == getpid();
    int leader = syscall(SYS_gettid) == getpid();
    printf("%s: same pid %s, thread is leader %s\n", mode, same ? "yes" : "NO",
           leader ? "yes" : "NO");
}

int main(int argc, char **argv) {
    if (argc < 1) return 1;
    /* argv[0] is the path we were run as (the test runs us by an absolute path). */
    strncpy(self_path, argv[0], sizeof self_path - 1);
    if (argc == 3 && strcmp(argv[1], "after-main") == 0) {
        check("after-main", argv[2]);
        pthread_t t, s;
        pthread_create(&s, NULL, spin, NULL);
        pthread_create(&t, NULL, exec_from_thread, NULL);
        pthread_join(t, NULL); /* the exec ends this wait */
        puts("join returned: WRONG");
        return 1;
    }
    if (argc == 3 && strcmp(argv[1], "after-thread") == 0) {
        check("after-thread", argv[2]);
        /* The new program can make threads of its own. */
        pthread_t t;
        pthread_create(&t, NULL, wait_sleep, NULL);
        pthread_detach(t);
        return 3;
    }
    puts("start");
    if (pipe(pipefd) != 0) return 1;
    void *(*fns[])(void *) = {spin, wait_cond, wait_read, wait_sleep};
    for (int i = 0; i < 4; i++) {
        pthread_t t;
        pthread_create(&t, NULL, fns[i], NULL);
    }
    /* Let them all get going (the spinner must be running). */
    while (spins < 1000000) {}
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    exec_self("after-main");
    return 1;
}
