/* The shared library of the stripped-binary tests (tests/stripped.rs).
 *
 * A tiny exported function first, then hot static functions that only `.symtab` names:
 * once the library is stripped to its `.dynsym`, the hot code lies past the end of
 * `work_is_supported`, the layout that used to charge it every sample (issue 23). */
#include <stdint.h>

int work_is_supported(int x) { return x == 3; }

static uint64_t __attribute__((noinline)) mix_a(uint64_t n) {
    uint64_t s = 1;
    for (uint64_t i = 0; i < n; i++) s = s * 6364136223846793005ull + (i ^ (s >> 17));
    return s;
}

static uint64_t __attribute__((noinline)) mix_b(uint64_t n) {
    uint64_t s = 7;
    for (uint64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s += i;
    }
    return s;
}

/* Exported and hot: named even in the `.dynsym`-only library. */
uint64_t work_run(uint64_t n) {
    uint64_t acc = 0;
    for (uint64_t i = 0; i < n; i++) acc = acc * 3 + i;
    return acc + mix_a(n) + mix_b(2 * n);
}
