/* Signals interrupt blocking system calls (signal(7), "Interruption of system calls
 * and library functions by signal handlers"): a handled SIGALRM ends a blocked read,
 * accept, wait4 with EINTR, or restarts them after the handler with SA_RESTART; poll,
 * select, epoll_wait, ppoll, pause and sigsuspend return EINTR even with SA_RESTART;
 * an ignored SIGCHLD interrupts nothing; a child blocked in poll or read is killed
 * promptly by SIGKILL or a default-action SIGTERM. Each case prints one line. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled;
static int pipe_fds[2];
static int feed_on_signal;

static void on_sig(int s) {
    (void)s;
    handled++;
    if (feed_on_signal) {
        char c = 'x';
        (void)!write(pipe_fds[1], &c, 1);
    }
}

static void handle(int sig, int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sig;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* SIGALRM in `ms` milliseconds. */
static void arm(int ms) {
    struct itimerval it = {{0, 0}, {ms / 1000, (ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static const char *err(long r) {
    if (r != -1) return "ok";
    return errno == EINTR ? "EINTR" : errno == ECHILD ? "ECHILD" : strerror(errno);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void fresh_pipe(void) {
    if (pipe_fds[0]) { close(pipe_fds[0]); if (pipe_fds[1] >= 0) close(pipe_fds[1]); }
    if (pipe(pipe_fds) != 0) { perror("pipe"); exit(1); }
}

static void reads(void) {
    char b[8];
    fresh_pipe();
    handle(SIGALRM, 0);
    handled = 0;
    arm(100);
    long r = read(pipe_fds[0], b, sizeof b);
    printf("read, no SA_RESTART: %ld %s, handled %d\n", r, err(r), handled);

    fresh_pipe();
    handle(SIGALRM, SA_RESTART);
    feed_on_signal = 1;
    handled = 0;
    arm(100);
    r = read(pipe_fds[0], b, sizeof b);
    printf("read, SA_RESTART: %ld %s, handled %d\n", r, err(r), handled);
    feed_on_signal = 0;
}

static void polls(void) {
    fresh_pipe();
    handle(SIGALRM, SA_RESTART);
    struct pollfd p = {pipe_fds[0], POLLIN, 0};
    handled = 0;
    arm(100);
    long r = poll(&p, 1, -1);
    printf("poll, SA_RESTART: %ld %s, handled %d\n", r, err(r), handled);

    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(pipe_fds[0], &rd);
    handled = 0;
    arm(100);
    r = select(pipe_fds[0] + 1, &rd, NULL, NULL, NULL);
    printf("select, SA_RESTART: %ld %s, handled %d\n", r, err(r), handled);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
    epoll_ctl(ep, EPOLL_CTL_ADD, pipe_fds[0], &ev);
    handled = 0;
    arm(100);
    r = epoll_wait(ep, &ev, 1, -1);
    printf("epoll_wait, SA_RESTART: %ld %s, handled %d\n", r, err(r), handled);

    /* ppoll's mask lets a blocked SIGALRM in while it waits; the old mask is back. */
    sigset_t block, during, after;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    sigprocmask(SIG_BLOCK, &block, NULL);
    sigemptyset(&during);
    handled = 0;
    arm(100);
    r = ppoll(&p, 1, NULL, &during);
    sigprocmask(SIG_BLOCK, NULL, &after);
    printf("ppoll with SIGALRM unblocked: %ld %s, handled %d, blocked after %d\n", r, err(r),
           handled, sigismember(&after, SIGALRM));

    /* A poll with data ready returns it even with a signal pending. */
    (void)!write(pipe_fds[1], "y", 1);
    arm(1);
    usleep(50000);
    r = ppoll(&p, 1, NULL, &during);
    printf("ppoll with data ready: %ld, revents %d, handled %d\n", r, p.revents, handled);
    sigprocmask(SIG_UNBLOCK, &block, NULL);
    close(ep);
}

static void suspends(void) {
    handle(SIGALRM, SA_RESTART);
    handled = 0;
    arm(100);
    long r = pause();
    printf("pause: %ld %s, handled %d\n", r, err(r), handled);

    sigset_t block, during, after;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    sigprocmask(SIG_BLOCK, &block, NULL);
    sigemptyset(&during);
    handled = 0;
    arm(100);
    r = sigsuspend(&during);
    sigprocmask(SIG_BLOCK, NULL, &after);
    printf("sigsuspend: %ld %s, handled %d, blocked after %d\n", r, err(r), handled,
           sigismember(&after, SIGALRM));
    sigprocmask(SIG_UNBLOCK, &block, NULL);

    /* alarm() reports the seconds left of the one before, rounded. */
    alarm(5);
    printf("alarm left: %u\n", alarm(0));
}

static void accepts(void) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "sock-%d", getpid());
    unlink(a.sun_path);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 1) != 0) {
        perror("bind");
        exit(1);
    }
    handle(SIGALRM, 0);
    handled = 0;
    arm(100);
    long r = accept(s, NULL, NULL);
    printf("accept, no SA_RESTART: %ld %s, handled %d\n", r, err(r), handled);
    close(s);
    unlink(a.sun_path);
}

static void waits(void) {
    /* A handled SIGCHLD of one child interrupts a blocked waitpid for another (no
     * SA_RESTART), or the wait goes on after the handler (SA_RESTART). */
    /* The second child ends only once the first one's SIGCHLD was handled (the handler
     * feeds it a byte), so a slow fork on a loaded machine cannot reorder the two. */
    for (int restart = 0; restart < 2; restart++) {
        handle(SIGCHLD, restart ? SA_RESTART : 0);
        fresh_pipe();
        handled = 0;
        feed_on_signal = 1;
        pid_t c1 = fork();
        if (c1 == 0) { usleep(500000); _exit(3); }
        pid_t c2 = fork();
        if (c2 == 0) { char b; (void)!read(pipe_fds[0], &b, 1); _exit(4); }
        int st = 0;
        long r = waitpid(c2, &st, 0);
        printf("waitpid, other child's SIGCHLD handled%s: %s, handled %s\n",
               restart ? " (SA_RESTART)" : "", r == c2 ? "child" : err(r),
               handled ? "yes" : "no");
        if (r != c2) {
            r = waitpid(c2, &st, 0);
            printf("waitpid again: %s, status %d\n", r == c2 ? "child" : err(r), WEXITSTATUS(st));
        } else {
            printf("status %d\n", WEXITSTATUS(st));
        }
        waitpid(c1, &st, 0);
        feed_on_signal = 0;
    }

    /* ...and an ignored one (the default) does not interrupt a poll. */
    signal(SIGCHLD, SIG_DFL);
    fresh_pipe();
    int st;
    pid_t c = fork();
    if (c == 0) _exit(0);
    struct pollfd p = {pipe_fds[0], POLLIN, 0};
    long r = poll(&p, 1, 300);
    printf("poll with SIGCHLD default: %ld %s\n", r, err(r));
    waitpid(c, &st, 0);
}

static void kills(void) {
    const char *how[] = {"poll", "read", "waitpid", "sigsuspend"};
    int sigs[] = {SIGKILL, SIGTERM};
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 2; k++) {
            fresh_pipe();
            /* The waitpid case's grandchild holds `gone`'s write end: it waits for the
             * pipe's other writers to go (the killed child, then us), and its end is
             * seen here, so no process outlives the program. */
            int gone[2];
            if (pipe(gone) != 0) { perror("pipe"); exit(1); }
            pid_t c = fork();
            if (c == 0) {
                char b;
                struct pollfd p = {pipe_fds[0], POLLIN, 0};
                sigset_t none;
                sigemptyset(&none);
                switch (i) {
                case 0: poll(&p, 1, -1); break;
                case 1: (void)!read(pipe_fds[0], &b, 1); break;
                case 2: {
                    pid_t g = fork();
                    if (g == 0) {
                        close(gone[0]);
                        close(pipe_fds[1]);
                        (void)!read(pipe_fds[0], &b, 1);
                        _exit(0);
                    }
                    waitpid(g, NULL, 0);
                    break;
                }
                case 3: sigsuspend(&none); break;
                }
                _exit(50);
            }
            close(gone[1]);
            usleep(100000);
            double t0 = now();
            kill(c, sigs[k]);
            int st = 0;
            waitpid(c, &st, 0);
            int fast = now() - t0 < 2.0;
            printf("child in %s: killed by %d, in time %s\n", how[i],
                   WIFSIGNALED(st) ? WTERMSIG(st) : -WEXITSTATUS(st), fast ? "yes" : "no");
            close(pipe_fds[1]);
            pipe_fds[1] = -1;
            char b;
            while (read(gone[0], &b, 1) > 0) {
            }
            close(gone[0]);
        }
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    reads();
    polls();
    suspends();
    accepts();
    waits();
    kills();
    return 0;
}
