/* Sockets and blocking reads between threads for tests/linux.rs: a pipe read and an
 * accept that block until another thread acts, AF_UNIX and TCP echo servers, UDP with
 * addresses, sendmsg/recvmsg with several iovecs, a descriptor passed in SCM_RIGHTS,
 * socket options, shutdown. Prints only what is deterministic. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void nap(int ms) {
    struct timespec ts = {0, ms * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static int pipefd[2];

static void *pipe_reader(void *arg) {
    char buf[32] = {0};
    ssize_t n = read(pipefd[0], buf, sizeof buf - 1); /* blocks until main writes */
    printf("pipe reader got %zd '%s'\n", n, buf);
    return arg;
}

static void *echo_server(void *arg) {
    int ls = *(int *)arg;
    int c = accept(ls, NULL, NULL); /* blocks until main connects */
    char buf[64];
    ssize_t n;
    while ((n = recv(c, buf, sizeof buf, 0)) > 0) send(c, buf, n, 0);
    close(c);
    return NULL;
}

static void echo_round(const char *what, int ls, const struct sockaddr *to, socklen_t len) {
    pthread_t t;
    pthread_create(&t, NULL, echo_server, &ls);
    nap(20);
    int c = socket(to->sa_family, SOCK_STREAM, 0);
    if (connect(c, to, len) < 0) {
        printf("%s: connect: %s\n", what, strerror(errno));
        return;
    }
    const char *msg = "ping over the socket";
    send(c, msg, strlen(msg), 0);
    char buf[64] = {0};
    size_t got = 0;
    while (got < strlen(msg)) {
        ssize_t n = recv(c, buf + got, sizeof buf - 1 - got, 0);
        if (n <= 0) break;
        got += n;
    }
    shutdown(c, SHUT_WR);
    pthread_join(t, NULL);
    char rest;
    printf("%s: echoed '%s', after shutdown recv %zd\n", what, buf, recv(c, &rest, 1, 0));
    close(c);
}

int main(void) {
    /* A blocking pipe read in one thread, the write in another. */
    if (pipe(pipefd) < 0) return 1;
    pthread_t t;
    pthread_create(&t, NULL, pipe_reader, NULL);
    nap(30);
    write(pipefd[1], "through the pipe", 16);
    pthread_join(t, NULL);

    /* AF_UNIX stream echo. */
    char path[64];
    snprintf(path, sizeof path, "/tmp/lbrprof-net-%d.sock", getpid());
    unlink(path);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    strncpy(un.sun_path, path, sizeof un.sun_path - 1);
    int us = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int bound = bind(us, (struct sockaddr *)&un, sizeof un);
    printf("unix bind: %d, listen: %d\n", bound, listen(us, 4));
    echo_round("unix", us, (struct sockaddr *)&un, sizeof un);
    close(us);
    unlink(path);

    /* TCP on loopback, an ephemeral port, options. */
    int ts = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    printf("SO_REUSEADDR: %d\n", setsockopt(ts, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(ts, (struct sockaddr *)&in, sizeof in);
    listen(ts, 4);
    socklen_t len = sizeof in;
    getsockname(ts, (struct sockaddr *)&in, &len);
    int type = 0;
    socklen_t tl = sizeof type;
    getsockopt(ts, SOL_SOCKET, SO_TYPE, &type, &tl);
    printf("tcp: port nonzero %d, addr len %u, SO_TYPE %d (len %u)\n", in.sin_port != 0, len,
           type, tl);
    echo_round("tcp", ts, (struct sockaddr *)&in, sizeof in);
    close(ts);

    /* UDP: addresses in and out. */
    int a = socket(AF_INET, SOCK_DGRAM, 0), b = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in ba = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(b, (struct sockaddr *)&ba, sizeof ba);
    len = sizeof ba;
    getsockname(b, (struct sockaddr *)&ba, &len);
    errno = 0;
    struct sockaddr_in peer;
    socklen_t pl = sizeof peer;
    int gp = getpeername(b, (struct sockaddr *)&peer, &pl);
    printf("getpeername unconnected: %d %s\n", gp, strerror(errno));
    sendto(a, "datagram", 8, 0, (struct sockaddr *)&ba, sizeof ba);
    char dg[16] = {0};
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(b, dg, sizeof dg, 0, (struct sockaddr *)&from, &fl);
    printf("udp: %zd '%s' from loopback %d, len %u\n", n, dg,
           from.sin_addr.s_addr == htonl(INADDR_LOOPBACK), fl);

    /* socketpair: gathered send, scattered receive, and a descriptor passed along. */
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    int p2[2];
    pipe(p2);
    char h1[] = "head-", h2[] = "tail";
    struct iovec out_iov[2] = {{h1, 5}, {h2, 4}};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr m = {.msg_iov = out_iov, .msg_iovlen = 2, .msg_control = ctl.buf,
                       .msg_controllen = sizeof ctl.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &p2[0], sizeof(int));
    printf("sendmsg: %zd\n", sendmsg(sv[0], &m, 0));
    close(p2[0]);
    char r1[3] = {0}, r2[16] = {0};
    struct iovec in_iov[2] = {{r1, 2}, {r2, sizeof r2 - 1}};
    memset(&ctl, 0, sizeof ctl);
    struct msghdr rm = {.msg_iov = in_iov, .msg_iovlen = 2, .msg_control = ctl.buf,
                        .msg_controllen = sizeof ctl.buf};
    n = recvmsg(sv[1], &rm, MSG_CMSG_CLOEXEC);
    int passed = -1;
    c = CMSG_FIRSTHDR(&rm);
    if (c && c->cmsg_type == SCM_RIGHTS) memcpy(&passed, CMSG_DATA(c), sizeof(int));
    write(p2[1], "via passed fd", 13);
    char pb[16] = {0};
    ssize_t pn = passed >= 0 ? read(passed, pb, sizeof pb - 1) : -1;
    printf("recvmsg: %zd '%s' + '%s', passed fd works: %zd '%s'\n", n, r1, r2, pn, pb);
    return 0;
}
