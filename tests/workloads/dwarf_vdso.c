/* dwarf_vdso [N]: N calls of clock_gettime, which run in the kernel's vDSO (no syscall),
 * built -O2 -fomit-frame-pointer: `--call-graph dwarf` must unwind out of the vDSO with
 * its own CFI to reach main. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) long spin(long n) {
    struct timespec ts;
    long s = 0;
    for (long i = 0; i < n; i++) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s += ts.tv_nsec;
    }
    return s;
}

int main(int argc, char **argv) {
    printf("%ld\n", spin(argc > 1 ? atol(argv[1]) : 20000000));
    return 0;
}
