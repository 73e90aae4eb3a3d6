/* A writer that fills a pipe much faster than its reader drains it: the writer blocks
 * in write() on the full pipe until the reader (a thread, then a child process) takes
 * some out. Both the bytes and their order must arrive intact.
 *   linux_pipe_full [MIB]   (default 4) */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static size_t total;

/* Reads everything, slowly at first (so the pipe fills), and checks the pattern. */
static unsigned long drain(int fd) {
    static char buf[65536];
    size_t got = 0;
    unsigned long bad = 0;
    int rounds = 0;
    for (;;) {
        if (rounds++ < 5) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        ssize_t n = read(fd, buf, rounds < 20 ? 1000 : sizeof buf);
        if (n < 0) { perror("read"); exit(1); }
        if (n == 0) break;
        for (ssize_t i = 0; i < n; i++)
            if ((unsigned char)buf[i] != (unsigned char)((got + i) * 7 % 251)) bad++;
        got += n;
    }
    if (got != total) bad++;
    return bad;
}

static void fill(int fd) {
    static char chunk[100000];
    size_t sent = 0;
    while (sent < total) {
        size_t n = total - sent < sizeof chunk ? total - sent : sizeof chunk;
        for (size_t i = 0; i < n; i++) chunk[i] = (char)((sent + i) * 7 % 251);
        size_t off = 0;
        while (off < n) {
            ssize_t w = write(fd, chunk + off, n - off);
            if (w <= 0) { perror("write"); exit(1); }
            off += w;
        }
        sent += n;
    }
}

static int thread_fd;
static unsigned long thread_bad;
static void *reader(void *a) { (void)a; thread_bad = drain(thread_fd); return NULL; }
static void *writer(void *a) { (void)a; fill(thread_fd); close(thread_fd); return NULL; }

int main(int argc, char **argv) {
    total = (size_t)(argc > 1 ? atoi(argv[1]) : 4) << 20;
    int p[2];
    /* A reader thread. */
    if (pipe(p) != 0) return 1;
    thread_fd = p[0];
    pthread_t t;
    pthread_create(&t, NULL, reader, NULL);
    fill(p[1]);
    close(p[1]);
    pthread_join(t, NULL);
    close(p[0]);
    printf("thread reader: %zu bytes, %lu wrong\n", total, thread_bad);
    /* A reader process. */
    if (pipe(p) != 0) return 1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[1]);
        unsigned long bad = drain(p[0]);
        printf("child reader: %zu bytes, %lu wrong\n", total, bad);
        fflush(stdout);
        _exit(bad != 0);
    }
    close(p[0]);
    fill(p[1]);
    close(p[1]);
    int st;
    waitpid(pid, &st, 0);
    printf("child status %d\n", WEXITSTATUS(st));
    /* A writer thread, the main thread reading. */
    if (pipe(p) != 0) return 1;
    thread_fd = p[1];
    pthread_create(&t, NULL, writer, NULL);
    unsigned long bad = drain(p[0]);
    pthread_join(t, NULL);
    printf("writer thread: %zu bytes, %lu wrong\n", total, bad);
    return 0;
}
