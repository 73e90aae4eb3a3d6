/* A blocking connect is interrupted by a signal as on Linux: EINTR without
 * SA_RESTART; with SA_RESTART the call goes on and completes once the listener has
 * room (another thread accepts meanwhile). The connects block because the listener's
 * backlog is full (listen(fd, 0) with one connection not yet accepted): AF_UNIX, and
 * TCP on the loopback (the SYN is dropped and sent again after a second). */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled;

static void on_alarm(int sig)
{
    (void)sig;
    handled++;
}

static void handle(int restart)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigaction(SIGALRM, &sa, NULL);
}

static void alarm_in_ms(long ms)
{
    struct itimerval it = {{0, 0}, {ms / 1000, (ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

struct target {
    int domain;
    struct sockaddr_storage addr;
    socklen_t len;
    int listener;
};

/* A listener whose backlog is full: listen(0) and one connection not accepted. */
static void full_listener(struct target *t, int domain, const char *path)
{
    t->domain = domain;
    t->listener = socket(domain, SOCK_STREAM, 0);
    memset(&t->addr, 0, sizeof t->addr);
    if (domain == AF_UNIX) {
        struct sockaddr_un *u = (struct sockaddr_un *)&t->addr;
        u->sun_family = AF_UNIX;
        strncpy(u->sun_path, path, sizeof u->sun_path - 1);
        unlink(path);
        t->len = sizeof *u;
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&t->addr;
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        t->len = sizeof *in;
    }
    if (bind(t->listener, (struct sockaddr *)&t->addr, t->len) != 0) {
        perror("bind");
        exit(1);
    }
    getsockname(t->listener, (struct sockaddr *)&t->addr, &t->len);
    listen(t->listener, 0);
    int first = socket(domain, SOCK_STREAM, 0);
    if (connect(first, (struct sockaddr *)&t->addr, t->len) != 0) {
        perror("first connect");
        exit(1);
    }
}

static void *accept_later(void *arg)
{
    struct target *t = arg;
    struct timespec d = {0, 200 * 1000 * 1000};
    nanosleep(&d, NULL);
    int c = accept(t->listener, NULL, NULL);
    return (void *)(long)(c >= 0);
}

static void attempt(const char *name, struct target *t, int restart)
{
    handle(restart);
    handled = 0;
    pthread_t th;
    if (restart)
        pthread_create(&th, NULL, accept_later, t);
    int s = socket(t->domain, SOCK_STREAM, 0);
    double start = now();
    alarm_in_ms(50);
    int r = connect(s, (struct sockaddr *)&t->addr, t->len);
    int e = errno;
    double took = now() - start;
    if (restart)
        pthread_join(th, NULL);
    printf("%s, %s: %d %s, handled %d, in time %s\n", name,
           restart ? "SA_RESTART" : "no SA_RESTART", r, r == 0 ? "ok" : e == EINTR ? "EINTR" : strerror(e),
           (int)handled, took < (restart ? 10.0 : 2.0) ? "yes" : "no");
    close(s);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    char path[64];
    snprintf(path, sizeof path, "connect-intr-%d.sock", (int)getpid());
    struct target u;
    full_listener(&u, AF_UNIX, path);
    attempt("unix connect", &u, 0);
    attempt("unix connect", &u, 1);
    unlink(path);
    struct target tcp;
    full_listener(&tcp, AF_INET, NULL);
    attempt("tcp connect", &tcp, 0);
    attempt("tcp connect", &tcp, 1);
    return 0;
}
