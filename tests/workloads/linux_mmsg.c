/* sendmmsg and recvmmsg, as glibc's resolver (A and AAAA queries in one sendmmsg)
 * and UDP servers use them: datagrams between two UDP sockets on 127.0.0.1 and on an
 * AF_UNIX datagram pair, with MSG_WAITFORONE, addresses and each message's length. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void exchange(const char *what, int tx, int rx, struct sockaddr_in *to) {
    const char *words[3] = {"alpha", "be", "gamma-delta"};
    struct mmsghdr out[3];
    struct iovec oiov[3];
    memset(out, 0, sizeof out);
    for (int i = 0; i < 3; i++) {
        oiov[i].iov_base = (void *)words[i];
        oiov[i].iov_len = strlen(words[i]);
        out[i].msg_hdr.msg_iov = &oiov[i];
        out[i].msg_hdr.msg_iovlen = 1;
        if (to) {
            out[i].msg_hdr.msg_name = to;
            out[i].msg_hdr.msg_namelen = sizeof *to;
        }
    }
    int sent = sendmmsg(tx, out, 3, 0);
    printf("%s: sendmmsg %d, lengths %u %u %u\n", what, sent, out[0].msg_len, out[1].msg_len,
           out[2].msg_len);
    char bufs[4][32];
    struct iovec iiov[4];
    struct mmsghdr in[4];
    struct sockaddr_in from[4];
    memset(in, 0, sizeof in);
    for (int i = 0; i < 4; i++) {
        iiov[i].iov_base = bufs[i];
        iiov[i].iov_len = sizeof bufs[i];
        in[i].msg_hdr.msg_iov = &iiov[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &from[i];
        in[i].msg_hdr.msg_namelen = sizeof from[i];
    }
    int got = recvmmsg(rx, in, 4, MSG_WAITFORONE, NULL);
    printf("%s: recvmmsg %d:", what, got);
    for (int i = 0; i < got; i++)
        printf(" %.*s(%u)", (int)in[i].msg_len, bufs[i], in[i].msg_len);
    printf("\n");
    if (to && got > 0)
        printf("%s: from 127.0.0.1: %s\n", what,
               from[0].sin_addr.s_addr == htonl(INADDR_LOOPBACK) ? "yes" : "no");
    got = recvmmsg(rx, in, 4, MSG_DONTWAIT, NULL);
    printf("%s: nothing left: %d %s\n", what, got, got < 0 ? strerror(errno) : "");
}

int main(void) {
    int a = socket(AF_INET, SOCK_DGRAM, 0), b = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(b, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        getsockname(b, (struct sockaddr *)&addr, &len) != 0) {
        perror("bind");
        return 1;
    }
    exchange("udp", a, b, &addr);
    int pair[2];
    socketpair(AF_UNIX, SOCK_DGRAM, 0, pair);
    exchange("unix", pair[0], pair[1], NULL);
    int r = sendmmsg(99, NULL, 1, 0);
    printf("bad descriptor: %d %s\n", r, strerror(errno));
    return 0;
}
