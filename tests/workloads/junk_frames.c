/* A hot loop run with RBP pointing at a made-up frame whose return address is user
 * memory nothing maps (0x300000000010): a frame-pointer walk taken there reads it, as a
 * walk through -O2 code that uses RBP for data reads junk. No JIT, no perf map: used by
 * tests/jit.rs to check the report does not ask for one. Build with -mno-red-zone (the
 * loop pushes RBP). usage: junk_frames ITERATIONS */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t fake_frame[2] = {0, 0x300000000010ULL};

int main(int argc, char **argv) {
    uint64_t n = argc > 1 ? strtoull(argv[1], 0, 10) : 100000000;
    uint64_t x = 0;
    __asm__ volatile("push %%rbp\n\t"
                     "mov %[fake], %%rbp\n\t"
                     "1: add %[n], %[x]\n\t"
                     "dec %[n]\n\t"
                     "jnz 1b\n\t"
                     "pop %%rbp"
                     : [x] "+r"(x), [n] "+r"(n)
                     : [fake] "r"(fake_frame)
                     : "memory", "cc");
    printf("%llu\n", (unsigned long long)x);
    return 0;
}
