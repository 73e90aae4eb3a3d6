/* The CPU's own outside world, read without a system call: RDRAND, RDSEED, RDTSC,
 * RDTSCP (built with -mrdrnd -mrdseed). Prints what it read and runs work whose length
 * depends on it: a loop that waits for the time-stamp counter to advance (natively its
 * spin count changes from run to run) and one whose rounds come from RDRAND. In exact
 * mode both are pinned, so two runs print and count the same (tests/exact.rs). */
#include <immintrin.h>
#include <stdio.h>
#include <x86intrin.h>

static unsigned long long draw(int seed_insn) {
    unsigned long long v = 0;
    for (int tries = 0; tries < 100; tries++) {
        if (seed_insn ? _rdseed64_step(&v) : __builtin_ia32_rdrand64_step(&v)) return v;
    }
    return 0;
}

int main(void) {
    unsigned long long r1 = draw(0), r2 = draw(0), s1 = draw(1);
    unsigned int r32 = 0;
    while (!__builtin_ia32_rdrand32_step(&r32)) {}
    printf("rdrand %016llx %016llx %08x\n", r1, r2, r32);
    printf("rdseed %016llx\n", s1);

    unsigned long long t0 = __rdtsc();
    unsigned long spins = 0;
    while (__rdtsc() - t0 < 20000) spins++;
    unsigned int aux = 0;
    unsigned long long t1 = __rdtscp(&aux);
    printf("rdtsc %llu %llu spins %lu aux %u\n", t0, t1, spins, aux);

    unsigned long long x = 0;
    for (unsigned long i = 0; i < (r1 & 0xffff) + 1000; i++) x = x * 31 + (i ^ (x >> 7));
    printf("work %llu\n", x);
    return 0;
}
