/* Several threads in the same hot code at once, for the emulated LBR under the VM's
 * Linux personality (tests/lbr.rs): each of THREADS threads (default 4) runs ROUNDS
 * rounds of shared_hot(), a branchy function that also calls into libc through the PLT
 * (qsort with a comparator in this program, strlen, memcpy), on its own data. Every
 * thread runs every instruction the others run, so a breakpoint one vCPU places in the
 * code is in all the others' way. Output is deterministic (one checksum per thread, in
 * thread order), so it can be compared with the native run.
 *
 *   shared_hot [THREADS [ROUNDS]]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 16
#define KEYS 64

static unsigned long rounds = 3000;
static unsigned long sums[MAX_THREADS];

static int cmp_keys(const void *a, const void *b)
{
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) unsigned long shared_hot(unsigned long seed)
{
    unsigned long keys[KEYS], copy[KEYS];
    char text[48];
    unsigned long s = seed;
    for (int i = 0; i < KEYS; i++) {
        s = s * 6364136223846793005UL + 1442695040888963407UL;
        keys[i] = s >> 33;
    }
    memcpy(copy, keys, sizeof keys);
    qsort(copy, KEYS, sizeof copy[0], cmp_keys);
    unsigned long acc = 0;
    for (int i = 0; i < KEYS; i++) {
        if (copy[i] & 1)
            acc += copy[i] % 7;
        else if (copy[i] & 2)
            acc ^= copy[i];
        else
            acc -= i;
    }
    int n = snprintf(text, sizeof text, "%lu", acc);
    return acc + strlen(text) + (unsigned long)n;
}

static void *worker(void *arg)
{
    unsigned long id = (unsigned long)arg, sum = 0;
    for (unsigned long r = 0; r < rounds; r++)
        sum += shared_hot(id * 1000003UL + r);
    sums[id] = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2)
        rounds = strtoul(argv[2], NULL, 10);
    if (threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "shared_hot: 1 to %d threads\n", MAX_THREADS);
        return 2;
    }
    pthread_t t[MAX_THREADS];
    for (long i = 1; i < threads; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)i) != 0) {
            perror("pthread_create");
            return 1;
        }
    worker((void *)0);
    for (long i = 1; i < threads; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < threads; i++)
        printf("thread %d: %lu\n", i, sums[i]);
    return 0;
}
