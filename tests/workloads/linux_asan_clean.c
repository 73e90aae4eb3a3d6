/* A clean AddressSanitizer program: heap, stack and global arrays used within bounds,
 * a thread, and memory freed; it prints a checksum and exits 0. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int table[256];

static void *work(void *arg) {
    long n = (long)arg;
    long *v = malloc(n * sizeof *v);
    for (long i = 0; i < n; i++) v[i] = i * i;
    long s = 0;
    for (long i = 0; i < n; i++) s += v[i];
    free(v);
    return (void *)s;
}

int main(void) {
    char stack[64];
    memset(stack, 'a', sizeof stack - 1);
    stack[sizeof stack - 1] = 0;
    for (int i = 0; i < 256; i++) table[i] = i;
    unsigned long sum = strlen(stack);
    for (int round = 0; round < 200; round++) {
        size_t n = 1 + (size_t)round * 97;
        unsigned char *b = malloc(n);
        memset(b, round, n);
        sum += b[n - 1] + table[round & 255];
        free(b);
    }
    pthread_t t;
    void *r;
    pthread_create(&t, NULL, work, (void *)100000);
    pthread_join(t, &r);
    sum += (unsigned long)r;
    printf("checksum %lu\n", sum);
    return 0;
}
