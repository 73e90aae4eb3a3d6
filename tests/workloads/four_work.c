/* Four functions whose work is set by the arguments, for `lbrprof diff` tests and the
 * bench/diff-power benchmark:
 *
 *   four_work A B C D
 *
 * Each function runs a dependent multiply-add loop of its argument's length (in millions
 * of iterations), 10 rounds each; the time each takes is proportional to its argument.
 * Built with gcc -O1 -g -fno-omit-frame-pointer.
 */
#include <stdio.h>
#include <stdlib.h>
/* The multipliers are read at run time, so the four loops are the same instructions
 * (an IMUL each): with constants the compiler picked shifts for some, whose loops do
 * not take time in proportion to their length on every CPU (AMD Zen: 60 M iterations of
 * a shift-and-subtract loop 0.10 s, 96 M 0.13 s). */
static volatile unsigned long muls[4] = {31, 17, 13, 7};
#define WORK(name, k) \
  __attribute__((noinline)) unsigned long name(unsigned long n) { \
    unsigned long mul = muls[k]; \
    volatile unsigned long s = 1; \
    for (unsigned long i = 0; i < n; i++) s = s * mul + i; \
    return s; }
WORK(work_a, 0)
WORK(work_b, 1)
WORK(work_c, 2)
WORK(work_d, 3)
int main(int argc, char **argv) {
  if (argc != 5) { fprintf(stderr, "usage: four_work A B C D (millions of iterations)\n"); return 2; }
  unsigned long n[4], r = 0;
  for (int i = 0; i < 4; i++) n[i] = (unsigned long)(strtod(argv[i + 1], 0) * 1e5);
  for (int k = 0; k < 10; k++) { r += work_a(n[0]); r += work_b(n[1]); r += work_c(n[2]); r += work_d(n[3]); }
  printf("%lu\n", r & 1);
  return 0;
}
