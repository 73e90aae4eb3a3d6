/* A single-threaded workload with one known hot function.
 *
 *   hot [ITERATIONS [EXIT_CODE]]
 *
 * Prints its pid, spends nearly all of its time in hot_loop(), prints the result and
 * exits with EXIT_CODE (default 0). Built by tests/record.rs with
 * gcc -O1 -g -fno-omit-frame-pointer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* The volatile local gives hot_loop a stack frame, so with -fno-omit-frame-pointer it
 * pushes %rbp and a frame-pointer walk from a sample inside it finds main (gcc omits the
 * frame of a leaf function that needs no stack, whatever -fno-omit-frame-pointer says). */
__attribute__((noinline)) unsigned long hot_loop(unsigned long n)
{
    volatile unsigned long last = 0;
    unsigned long s = 1;
    for (unsigned long i = 0; i < n; i++) {
        s = s * 6364136223846793005UL + (i ^ (s >> 29));
        if ((s & 0xff) == 0x42)
            last = i;
    }
    return s ^ last;
}

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 0) : 200000000UL;
    int code = argc > 2 ? atoi(argv[2]) : 0;
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    printf("result %lu\n", hot_loop(n));
    return code;
}
