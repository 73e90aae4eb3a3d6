/* dwarf_threads [ROUNDS]: four threads each sort and hash arrays with libc's qsort (the
 * comparison callback under libc's frames), for bench/dwarf's out-of-order perf.data:
 * built with gcc -O2 -fomit-frame-pointer -pthread and recorded with --call-graph dwarf
 * and a small ring buffer (-m), whose per-CPU buffers are drained late and lose samples,
 * so records come out of FINISHED_ROUND order. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b) {
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) unsigned long work(unsigned seed, int n) {
    unsigned *v = malloc(n * sizeof *v);
    unsigned long h = 0;
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245 + 12345;
        v[i] = seed;
    }
    qsort(v, n, sizeof *v, cmp);
    for (int i = 0; i < n; i++) h = h * 31 + v[i];
    free(v);
    return h;
}

__attribute__((noinline)) void *thread_main(void *arg) {
    long rounds = (long)arg;
    unsigned long h = 0;
    for (long r = 0; r < rounds; r++) h += work(r, 20000);
    return (void *)h;
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 200;
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, thread_main, (void *)rounds);
    unsigned long h = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        h += (unsigned long)r;
    }
    printf("%lu\n", h & 1);
    return 0;
}
