/* Event descriptors for tests/linux.rs: epoll (data cookies, MOD/DEL, level and edge
 * triggers, timeouts), eventfd (counter and semaphore), timerfd, FIONREAD/FIONBIO; a
 * thread wakes the loop. Prints only what is deterministic, so the output is the same
 * natively and in the VM. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441
#endif

#define PIPE_COOKIE 0x1111000000000001ull
#define EVENT_COOKIE 0x2222000000000002ull
#define TIMER_COOKIE 0x3333000000000003ull

static int pipefd[2], efd;

static void *waker(void *arg) {
    (void)arg;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    if (write(pipefd[1], "hello", 5) != 5) return (void *)1;
    uint64_t one = 3;
    if (write(efd, &one, 8) != 8) return (void *)1;
    return NULL;
}

static const char *err(int r) { return r < 0 ? strerror(errno) : "ok"; }

int main(void) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    printf("epoll_create1: %s, cloexec %d\n", err(ep), (fcntl(ep, F_GETFD) & FD_CLOEXEC) != 0);
    errno = 0;
    printf("epoll_create1(bad flags): %s\n", err(epoll_create1(0x1234)));
    if (pipe2(pipefd, O_NONBLOCK) < 0) return 1;
    efd = eventfd(0, EFD_NONBLOCK);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    printf("eventfd: %s, timerfd: %s\n", err(efd), err(tfd));

    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = PIPE_COOKIE};
    printf("add pipe: %s\n", err(epoll_ctl(ep, EPOLL_CTL_ADD, pipefd[0], &ev)));
    printf("add pipe again: %s\n", err(epoll_ctl(ep, EPOLL_CTL_ADD, pipefd[0], &ev)));
    ev.data.u64 = EVENT_COOKIE;
    printf("add eventfd: %s\n", err(epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev)));
    ev.events = EPOLLIN | EPOLLET;
    ev.data.u64 = TIMER_COOKIE;
    printf("add timerfd (edge): %s\n", err(epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev)));
    printf("add itself: %s\n", err(epoll_ctl(ep, EPOLL_CTL_ADD, ep, &ev)));
    printf("add bad fd: %s\n", err(epoll_ctl(ep, EPOLL_CTL_ADD, 999, &ev)));

    struct epoll_event out[8];
    printf("nothing ready: %d\n", epoll_wait(ep, out, 8, 0));
    printf("maxevents 0: %s\n", err(epoll_wait(ep, out, 0, 0)));
    struct timespec tmo = {0, 1000 * 1000};
    printf("pwait2 1 ms: %ld\n", syscall(SYS_epoll_pwait2, ep, out, 8, &tmo, NULL, 8));

    struct itimerspec its = {{0, 5 * 1000 * 1000}, {0, 5 * 1000 * 1000}};
    printf("timerfd_settime: %s\n", err(timerfd_settime(tfd, 0, &its, NULL)));
    pthread_t t;
    pthread_create(&t, NULL, waker, NULL);

    int got_pipe = 0, got_event = 0, timer_wakeups = 0, bad_cookie = 0;
    uint64_t expirations = 0;
    while (!got_pipe || !got_event || expirations < 3) {
        int n = epoll_wait(ep, out, 8, 1000);
        if (n <= 0) {
            printf("wait timed out or failed: %d\n", n);
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (out[i].data.u64 == PIPE_COOKIE) {
                int avail = -1;
                ioctl(pipefd[0], FIONREAD, &avail);
                char buf[16] = {0};
                ssize_t r = read(pipefd[0], buf, sizeof buf);
                printf("pipe: FIONREAD %d, read %zd '%s'\n", avail, r, buf);
                got_pipe = 1;
            } else if (out[i].data.u64 == EVENT_COOKIE) {
                uint64_t v = 0;
                if (read(efd, &v, 8) == 8) printf("eventfd: %llu\n", (unsigned long long)v);
                got_event = 1;
            } else if (out[i].data.u64 == TIMER_COOKIE) {
                uint64_t v = 0;
                if (read(tfd, &v, 8) == 8) expirations += v;
                timer_wakeups++;
            } else {
                bad_cookie++;
            }
        }
    }
    pthread_join(t, NULL);
    printf("timer: at least 3 expirations %d, wakeups > 0 %d, bad cookies %d\n",
           expirations >= 3, timer_wakeups > 0, bad_cookie);

    struct itimerspec off = {{0, 0}, {0, 0}}, old, cur;
    timerfd_settime(tfd, 0, &off, &old);
    timerfd_gettime(tfd, &cur);
    printf("old interval %ld ns, disarmed %d\n", old.it_interval.tv_nsec,
           cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0);

    ev.events = EPOLLOUT;
    ev.data.u64 = 42;
    printf("mod eventfd to EPOLLOUT: %s\n", err(epoll_ctl(ep, EPOLL_CTL_MOD, efd, &ev)));
    int n = epoll_wait(ep, out, 8, 100);
    printf("writable: %d, cookie %llu, events %#x\n", n, (unsigned long long)out[0].data.u64,
           out[0].events);
    printf("del eventfd: %s\n", err(epoll_ctl(ep, EPOLL_CTL_DEL, efd, NULL)));
    printf("del again: %s\n", err(epoll_ctl(ep, EPOLL_CTL_DEL, efd, NULL)));

    int sem = eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK);
    uint64_t v = 0;
    ssize_t r1 = read(sem, &v, 8);
    ssize_t r2 = read(sem, &v, 8);
    errno = 0;
    ssize_t r3 = read(sem, &v, 8);
    printf("semaphore reads: %zd %zd %zd (%s), value %llu\n", r1, r2, r3, strerror(errno),
           (unsigned long long)v);
    int on = 0;
    const char *fionbio = err(ioctl(pipefd[0], FIONBIO, &on));
    printf("FIONBIO off: %s, O_NONBLOCK %d\n", fionbio,
           (fcntl(pipefd[0], F_GETFL) & O_NONBLOCK) != 0);
    printf("epoll_wait on a pipe: %s\n", err(epoll_wait(pipefd[0], out, 8, 0)));
    return 0;
}
