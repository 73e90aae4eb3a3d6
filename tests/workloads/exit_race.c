/* A process ends (exit_group) while its other threads keep entering blocking system
 * calls (futex waits without a timeout, woken over and over); its parent reads a pipe from it to end-of-file, then reaps it. Repeated, so
 * that the end often lands while a thread is on its way into a futex wait: that thread
 * must end with its process, not block where nothing wakes it (it would keep the
 * process's end of the pipe open, and the parent would wait for end-of-file forever).
 * Usage: exit_race [ROUNDS] (default 100); prints the number of rounds. */
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int never;

/* Waits without a timeout, again each time it is woken. */
static void *waits(void *arg) {
    (void)arg;
    for (;;)
        syscall(SYS_futex, &never, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    return NULL;
}

/* Wakes the waiters, over and over. */
static void *wakes(void *arg) {
    (void)arg;
    for (;;)
        syscall(SYS_futex, &never, FUTEX_WAKE_PRIVATE, 1 << 30, NULL, NULL, 0);
    return NULL;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 100;
    for (int r = 0; r < rounds; r++) {
        int p[2];
        if (pipe(p) != 0)
            return 2;
        pid_t child = fork();
        if (child < 0)
            return 2;
        if (child == 0) {
            close(p[0]);
            pthread_t t;
            for (int i = 0; i < 2; i++)
                pthread_create(&t, NULL, waits, NULL);
            pthread_create(&t, NULL, wakes, NULL);
            /* A few blocking calls of its own, so the others are under way. */
            for (int i = 0; i < 1 + r % 4; i++) {
                struct timespec brief = {0, 1000};
                syscall(SYS_futex, &never, FUTEX_WAIT_PRIVATE, 0, &brief, NULL, 0);
            }
            if (write(p[1], "x", 1) != 1)
                _exit(3);
            _exit(0);
        }
        close(p[1]);
        char buf[16];
        size_t got = 0;
        ssize_t n;
        while ((n = read(p[0], buf, sizeof buf)) > 0)
            got += (size_t)n;
        close(p[0]);
        int status;
        if (waitpid(child, &status, 0) != child || got != 1 || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0) {
            printf("round %d: %zu bytes, status %#x\n", r, got, status);
            return 1;
        }
    }
    printf("%d rounds\n", rounds);
    return 0;
}
