/* signalfd, for tests/linux_compat.rs: blocked signals read as signalfd_siginfo records
 * (the sender's pid), poll and epoll waking on a signalfd, a blocking read woken by a
 * child's kill, EAGAIN when nothing is pending, a changed set, a timer's SIGALRM.
 * What postgres's latch does on Linux. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static void show(const char *what, int fd) {
    struct signalfd_siginfo si;
    ssize_t n = read(fd, &si, sizeof si);
    if (n < 0) {
        printf("%s: %s\n", what, strerror(errno));
        return;
    }
    printf("%s: %zd bytes, signal %u, code %d, from us %d\n", what, n, si.ssi_signo, si.ssi_code,
           (pid_t)si.ssi_pid == getpid());
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    printf("signalfd: %s\n", fd < 0 ? strerror(errno) : "ok");
    show("nothing pending", fd);
    kill(getpid(), SIGUSR1);
    struct pollfd p = {fd, POLLIN, 0};
    int ready = poll(&p, 1, 1000);
    printf("poll: %d, readable %d\n", ready, !!(p.revents & POLLIN));
    show("read", fd);
    printf("poll after: %d\n", poll(&p, 1, 0));
    /* Two at once, in one read. */
    kill(getpid(), SIGUSR2);
    kill(getpid(), SIGUSR1);
    struct signalfd_siginfo two[4];
    ssize_t n = read(fd, two, sizeof two);
    printf("two pending: %zd bytes, signals %u %u\n", n, two[0].ssi_signo, two[1].ssi_signo);
    /* epoll, and a child's kill. */
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 7};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    pid_t c = fork();
    if (c == 0) {
        usleep(50000);
        kill(getppid(), SIGUSR2);
        _exit(0);
    }
    int r = epoll_wait(ep, &ev, 1, 5000);
    printf("epoll_wait: %d, cookie %u\n", r, ev.data.u32);
    struct signalfd_siginfo si;
    read(fd, &si, sizeof si);
    printf("from the child: signal %u, pid is the child's %d\n", si.ssi_signo, (pid_t)si.ssi_pid == c);
    waitpid(c, NULL, 0);
    /* A blocking signalfd, woken by a timer. */
    sigaddset(&set, SIGALRM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int bfd = signalfd(-1, &set, 0);
    struct itimerval it = {{0, 0}, {0, 30000}};
    setitimer(ITIMER_REAL, &it, NULL);
    n = read(bfd, &si, sizeof si);
    printf("blocking read: %zd bytes, signal %u\n", n, si.ssi_signo);
    /* A new set for the first one: SIGUSR1 no longer. */
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    printf("new set: %d\n", signalfd(fd, &set, 0) == fd);
    kill(getpid(), SIGUSR1);
    show("SIGUSR1 after the set changed", fd);
    sigset_t pending;
    sigpending(&pending);
    printf("SIGUSR1 still pending %d\n", sigismember(&pending, SIGUSR1));
    n = read(bfd, &si, 10);
    printf("short buffer: %zd %s\n", n, strerror(errno));
    r = signalfd(0, &set, 0);
    printf("not a signalfd: %d %s\n", r, strerror(errno));
    return 0;
}
