/* Exact counts against valgrind (tests/callgrind.rs): the program's own functions have
 * no libc calls in them, so their instruction counts cannot depend on which CPU features
 * libc sees; calls (direct, indirect, recursive) have inclusive costs to compare.
 *
 *   callgrind_calls [N]     (default 3000)
 */
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) unsigned long mix(unsigned long x) {
    x ^= x >> 31; x *= 0x9e3779b97f4a7c15UL; return x ^ (x >> 29);
}
__attribute__((noinline)) unsigned fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
__attribute__((noinline)) unsigned long by_table(unsigned long (*f)(unsigned long), int n) {
    unsigned long s = 0;
    for (int i = 0; i < n; i++) s += f((unsigned long)i);
    return s;
}
__attribute__((noinline)) int collatz(unsigned long x) {
    int steps = 0;
    while (x != 1) { x = (x & 1) ? 3 * x + 1 : x / 2; steps++; }
    return steps;
}
__attribute__((noinline)) unsigned long work(int n) {
    unsigned long s = by_table(mix, n);
    for (int i = 1; i < n; i++) s += (unsigned long)collatz((unsigned long)i);
    return s + fib(18);
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 3000;
    printf("%lu\n", work(n));
    return 0;
}
