/* System-call round trips of the Linux personality (bench/linux-programs, README).
 *   getppid_loop [N]        N getppid() calls, timed
 *   getppid_loop N exit     N writes to port 0xd1, which lbrprof's Linux personality
 *                           ignores: the bare cost of leaving and re-entering the guest
 *                           (the floor of a system call). Only meaningful under
 *                           `lbrprof run --vm --`; natively it is a SIGSEGV.
 *   getppid_loop N read     N one-byte read()s from stdin
 *   getppid_loop N clock    N clock_gettime(CLOCK_MONOTONIC) calls (libc's: the vDSO) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    const char *mode = argc > 2 ? argv[2] : "getppid";
    struct timespec a, b;
    char c;
    long got = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    if (strcmp(mode, "exit") == 0) {
        for (long i = 0; i < n; i++) __asm__ volatile("outb %%al, $0xd1" ::: "memory");
    } else if (strcmp(mode, "read") == 0) {
        for (long i = 0; i < n; i++) got += read(0, &c, 1) == 1;
    } else if (strcmp(mode, "clock") == 0) {
        struct timespec t;
        for (long i = 0; i < n; i++) got += clock_gettime(CLOCK_MONOTONIC, &t) != 0;
    } else {
        for (long i = 0; i < n; i++) syscall(SYS_getppid);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%ld %s, %.0f ns each\n", n, mode, ns / n);
    return got < 0;
}
