/* A program the follow tests start from a shell, a parent or an exec: spins in
 * burn_NAME() (NAME given at build time with -DNAME=..., default "main") for ITERATIONS
 * iterations. Built with -DUSE_LIB it also calls lib_spin() of follow_lib.c (a shared
 * library) for as many iterations, so half its time is in the library.
 *
 *   follow_burn [ITERATIONS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef NAME
#define NAME main
#endif
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define BURN CAT(burn_, NAME)

#ifdef USE_LIB
unsigned long lib_spin(unsigned long n);
#endif

__attribute__((noinline)) unsigned long BURN(unsigned long n)
{
    unsigned long x = 1;
    for (unsigned long i = 0; i < n; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 0) : 100000000UL;
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    unsigned long r = BURN(n);
#ifdef USE_LIB
    r ^= lib_spin(n);
#endif
    return r == 42;
}
