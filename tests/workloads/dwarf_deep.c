/* dwarf_deep [ROUNDS]: deep user stacks for --call-graph dwarf, built at test time with
 * gcc -O2 -fomit-frame-pointer (no frame pointers: a kernel frame-pointer walk of these
 * stacks rarely reaches main). Each round sorts an array with libc's qsort (whose
 * comparison callback runs under libc's frames) 11 calls below main, then hashes it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b) {
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) unsigned long mix(unsigned long h, unsigned v) {
    for (int i = 0; i < 8; i++) h = (h ^ v) * 0x100000001b3ULL + (h >> 7);
    return h;
}

__attribute__((noinline)) unsigned long leaf_sum(unsigned *v, int n) {
    unsigned long h = 0;
    for (int i = 0; i < n; i++) h = mix(h, v[i]);
    return h;
}

__attribute__((noinline)) unsigned long recurse(unsigned *v, int n, int depth) {
    if (depth == 0) {
        qsort(v, n, sizeof *v, cmp);
        return leaf_sum(v, n);
    }
    char buf[64];
    memset(buf, depth, sizeof buf);
    return recurse(v, n, depth - 1) + buf[depth % 64];
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 300;
    int n = 20000;
    unsigned *v = malloc(n * sizeof *v);
    unsigned long total = 0;
    for (int r = 0; r < rounds; r++) {
        unsigned s = r * 2654435761u;
        for (int i = 0; i < n; i++) { s = s * 1664525u + 1013904223u; v[i] = s; }
        total += recurse(v, n, 10);
    }
    printf("%lu\n", total);
    return 0;
}
