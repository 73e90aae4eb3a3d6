/* The executable of the stripped-binary tests (tests/stripped.rs): `stripped_main [N]`
 * spends its time in the library's work_run, mix_a and mix_b and in its own spin_main,
 * each a sizeable share, calling the library and libc through the PLT. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

uint64_t work_run(uint64_t n);
int work_is_supported(int x);

static uint64_t __attribute__((noinline)) spin_main(uint64_t n) {
    uint64_t s = 3;
    for (uint64_t i = 0; i < n; i++) s = (s * 31) ^ (i >> 3);
    return s;
}

int main(int argc, char **argv) {
    uint64_t n = argc > 1 ? strtoull(argv[1], 0, 0) : 50000000;
    uint64_t r = work_is_supported(argc) + work_run(n) + spin_main(3 * n);
    printf("%llu\n", (unsigned long long)r);
    return 0;
}
