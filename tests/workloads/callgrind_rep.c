/* REP string instructions counted as valgrind counts them (tests/callgrind.rs): valgrind
 * runs `rep movsb` as a loop of itself, one pass per iteration plus the pass that finds
 * the count zero, and a REPE/REPNE compare or scan also ends on its condition. The own
 * functions below run each kind with counts from the input; main also calls libc's
 * memset, memcpy and strlen, whose large cases use REP too.
 *
 *   callgrind_rep [N]     (default 40)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char a[1 << 16] __attribute__((aligned(64))), b[1 << 16] __attribute__((aligned(64)));

__attribute__((noinline)) void copy_bytes(char *dst, const char *src, unsigned long n) {
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}
__attribute__((noinline)) void fill_quads(unsigned long *dst, unsigned long v, unsigned long n) {
    __asm__ volatile("rep stosq" : "+D"(dst), "+c"(n) : "a"(v) : "memory");
}
/* Bytes left when a REPE CMPSB ends (0: all n compared equal, or the last differed). */
__attribute__((noinline)) unsigned long equal_prefix(const char *x, const char *y, unsigned long n) {
    __asm__ volatile("repe cmpsb" : "+D"(x), "+S"(y), "+c"(n) : : "memory", "cc");
    return n;
}
/* Bytes left when a REPNE SCASB finds `c` (or runs out). */
__attribute__((noinline)) unsigned long scan_for(const char *p, char c, unsigned long n) {
    __asm__ volatile("repne scasb" : "+D"(p), "+c"(n) : "a"(c) : "memory", "cc");
    return n;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 40;
    unsigned long s = 0;
    for (int i = 0; i < n; i++) {
        memset(a, 'a' + i % 3, sizeof a - 97 * i);
        memcpy(b, a, sizeof a - 131 * i);
        copy_bytes(b + 1, a, 1000 + 17 * i);
        fill_quads((unsigned long *)b, 0x0101010101010101UL * (i & 7), 64 + i);
        copy_bytes(b, a, 0);
        b[300 + i] ^= 1;
        s += equal_prefix(a, b, 512);       /* cut short at 300 + i */
        s += equal_prefix(a, a, 64 + i);    /* all equal: runs to a zero count */
        s += equal_prefix(a, b, 301 + i);   /* the last byte differs, as the count ends */
        a[700 + i] = 0;
        s += scan_for(a, 0, 4096);          /* finds it at 700 + i */
        s += scan_for(b, 7, 50 + i);        /* runs out */
        s += strlen(a + i);
        a[700 + i] = 'x';
    }
    printf("%lu\n", s);
    return 0;
}
