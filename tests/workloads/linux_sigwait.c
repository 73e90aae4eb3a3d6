/* Signals taken synchronously, for tests/linux_compat.rs: sigwait, sigwaitinfo and
 * sigtimedwait (rt_sigtimedwait) on blocked signals already pending, sent later by a
 * child, a thread or a timer; realtime signals queued in order; sigqueue's value from
 * the process and from a child; a zero and a short timeout (EAGAIN), a bad one (EINVAL); a handled signal outside the set interrupting the
 * wait (EINTR); a handler of a waited-for signal not run; the mask as it was after the
 * call. Then signalfd reading a signal sent to the reading thread alone (pthread_kill)
 * and a forked child's signalfd woken by the child's own signal. What qemu-img's and
 * postgres's event loops do. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled_usr1, handled_alrm;

static void on_usr1(int sig) {
    (void)sig;
    handled_usr1++;
}

static void on_alrm(int sig) {
    (void)sig;
    handled_alrm++;
}

static long ms_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

static void *send_to_main(void *arg) {
    usleep(30000);
    pthread_kill(*(pthread_t *)arg, SIGUSR2);
    return NULL;
}

static void *kill_from_thread(void *arg) {
    (void)arg;
    usleep(30000);
    kill(getpid(), SIGUSR1);
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, &old);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    /* Already pending: taken at once, the handler not run. */
    kill(getpid(), SIGUSR1);
    int sig = 0;
    int r = sigwait(&set, &sig);
    printf("sigwait: %d, signal %d, handler ran %d\n", r, sig, handled_usr1);

    /* Nothing pending, no time to wait: EAGAIN; a short timeout: EAGAIN after it. */
    struct timespec zero = {0, 0};
    errno = 0;
    r = sigtimedwait(&set, NULL, &zero);
    printf("zero timeout: %d %s\n", r, strerror(errno));
    struct timespec t0, short_wait = {0, 40 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    errno = 0;
    r = sigtimedwait(&set, NULL, &short_wait);
    printf("short timeout: %d %s, waited it %d\n", r, strerror(errno), ms_since(&t0) >= 35);
    struct timespec bad = {0, 1000000000};
    errno = 0;
    r = sigtimedwait(&set, NULL, &bad);
    printf("bad timeout: %d %s\n", r, strerror(errno));

    /* Sent by a child while we wait: its pid and SI_USER in the info. */
    pid_t c = fork();
    if (c == 0) {
        usleep(30000);
        kill(getppid(), SIGUSR2);
        _exit(0);
    }
    siginfo_t si;
    memset(&si, 0, sizeof si);
    r = sigwaitinfo(&set, &si);
    printf("from the child: %d, code %d, pid is the child's %d\n", r, si.si_code, si.si_pid == c);
    waitpid(c, NULL, 0);

    /* Sent to this thread alone by another thread (tgkill), while we wait. */
    pthread_t self = pthread_self(), th;
    pthread_create(&th, NULL, send_to_main, &self);
    memset(&si, 0, sizeof si);
    r = sigwaitinfo(&set, &si);
    printf("from a thread to us: %d, code %d\n", r, si.si_code);
    pthread_join(th, NULL);

    /* Sent to the process by a thread that blocks it too. */
    pthread_create(&th, NULL, kill_from_thread, NULL);
    struct timespec long_wait = {10, 0};
    r = sigtimedwait(&set, &si, &long_wait);
    printf("from a thread to the process: %d, code %d, handler ran %d\n", r, si.si_code,
           handled_usr1);
    pthread_join(th, NULL);

    /* Realtime signals queue: two sends, two takes, in order. */
    sigset_t rt;
    sigemptyset(&rt);
    sigaddset(&rt, SIGRTMIN + 1);
    sigaddset(&rt, SIGRTMIN + 2);
    sigprocmask(SIG_BLOCK, &rt, NULL);
    kill(getpid(), SIGRTMIN + 2);
    kill(getpid(), SIGRTMIN + 1);
    kill(getpid(), SIGRTMIN + 1);
    for (int i = 0; i < 4; i++) {
        errno = 0;
        r = sigtimedwait(&rt, NULL, &zero);
        printf("realtime %d: %d %s\n", i, r < 0 ? r : r - SIGRTMIN, r < 0 ? strerror(errno) : "");
    }

    /* sigqueue: the value and SI_QUEUE reach the waiter, from us and from a child. */
    union sigval v = {.sival_int = 4242};
    sigqueue(getpid(), SIGRTMIN + 1, v);
    memset(&si, 0, sizeof si);
    r = sigwaitinfo(&rt, &si);
    printf("sigqueue: %d, code %d, value %d, pid is ours %d\n", r - SIGRTMIN, si.si_code,
           si.si_value.sival_int, si.si_pid == getpid());
    c = fork();
    if (c == 0) {
        union sigval cv = {.sival_int = 77};
        sigqueue(getppid(), SIGRTMIN + 2, cv);
        _exit(0);
    }
    memset(&si, 0, sizeof si);
    r = sigwaitinfo(&rt, &si);
    printf("sigqueue from the child: %d, code %d, value %d, pid is the child's %d\n",
           r - SIGRTMIN, si.si_code, si.si_value.sival_int, si.si_pid == c);
    waitpid(c, NULL, 0);

    /* A timer's SIGALRM, blocked and waited for. */
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_BLOCK, &alrm, NULL);
    struct itimerval it = {{0, 0}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    r = sigwaitinfo(&alrm, &si);
    printf("timer: %d, code %d\n", r, si.si_code);
    sigprocmask(SIG_UNBLOCK, &alrm, NULL);

    /* A handled signal outside the set interrupts the wait: EINTR, handler run (the
     * system call itself: musl's sigtimedwait calls it again after EINTR). */
    sa.sa_handler = on_alrm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    setitimer(ITIMER_REAL, &it, NULL);
    errno = 0;
    r = syscall(SYS_rt_sigtimedwait, &set, NULL, &long_wait, 8);
    printf("interrupted: %d %s, alarm handled %d\n", r, strerror(errno), handled_alrm);

    /* The mask is the one from before each call. */
    sigset_t now;
    sigprocmask(SIG_SETMASK, NULL, &now);
    printf("mask after: usr1 %d usr2 %d alrm %d\n", sigismember(&now, SIGUSR1),
           sigismember(&now, SIGUSR2), sigismember(&now, SIGALRM));

    /* signalfd: a signal to this thread alone. */
    int fd = signalfd(-1, &set, SFD_NONBLOCK);
    pthread_kill(pthread_self(), SIGUSR2);
    struct pollfd p = {fd, POLLIN, 0};
    printf("signalfd poll after pthread_kill: %d\n", poll(&p, 1, 1000));
    struct signalfd_siginfo ssi;
    ssize_t n = read(fd, &ssi, sizeof ssi);
    printf("signalfd read: %zd, signal %u, code %d\n", n, ssi.ssi_signo, ssi.ssi_code);
    /* Another thread's signal sent while we block in the read. */
    int bfd = signalfd(-1, &set, 0);
    pthread_create(&th, NULL, send_to_main, &self);
    n = read(bfd, &ssi, sizeof ssi);
    printf("blocking signalfd read, thread's pthread_kill: %zd, signal %u\n", n, ssi.ssi_signo);
    pthread_join(th, NULL);

    /* A forked child's signalfd: woken by the child's signal, not the parent's. */
    int pipefd[2];
    pipe(pipefd);
    c = fork();
    if (c == 0) {
        char go;
        read(pipefd[0], &go, 1);
        struct pollfd cp = {bfd, POLLIN, 0};
        int ready = poll(&cp, 1, 5000);
        n = read(bfd, &ssi, sizeof ssi);
        printf("child's signalfd: poll %d, read %zd, signal %u, from the parent %d\n", ready, n,
               ssi.ssi_signo, (pid_t)ssi.ssi_pid == getppid());
        _exit(0);
    }
    kill(c, SIGUSR1);
    write(pipefd[1], "g", 1);
    int status;
    waitpid(c, &status, 0);
    printf("child exited %d\n", WEXITSTATUS(status));
    printf("parent's signalfd after: poll %d\n", poll(&p, 1, 0));
    return 0;
}
