/* The cost of a futex hand-off between two threads (bench/linux-programs, README):
 * N round trips of a token passed by FUTEX_WAKE / FUTEX_WAIT between the main thread
 * and a second one. Prints "N round trips, T ns each".
 *
 *   futex_pingpong [N] */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static _Atomic int turn; /* 0: main's turn, 1: the other's */
static long n;

static void pass_to(int who)
{
    atomic_store(&turn, who);
    syscall(SYS_futex, &turn, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void wait_for(int me)
{
    int v;
    while ((v = atomic_load(&turn)) != me)
        syscall(SYS_futex, &turn, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}

static void *other(void *arg)
{
    (void)arg;
    for (long i = 0; i < n; i++) {
        wait_for(1);
        pass_to(0);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    n = argc > 1 ? atol(argv[1]) : 10000;
    pthread_t t;
    pthread_create(&t, NULL, other, NULL);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        pass_to(1);
        wait_for(0);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    pthread_join(t, NULL);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%ld round trips, %.0f ns each\n", n, ns / n);
    return 0;
}
