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
#define WORK(name, mul) \
  __attribute__((noinline)) unsigned long name(unsigned long n) { \
    volatile unsigned long s = 1; \
    for (unsigned long i = 0; i < n; i++) s = s * mul + i; \
    return s; }
WORK(work_a, 31)
WORK(work_b, 17)
WORK(work_c, 13)
WORK(work_d, 7)
int main(int argc, char **argv) {
  if (argc != 5) { fprintf(stderr, "usage: four_work A B C D (millions of iterations)\n"); return 2; }
  unsigned long n[4], r = 0;
  for (int i = 0; i < 4; i++) n[i] = (unsigned long)(strtod(argv[i + 1], 0) * 1e5);
  for (int k = 0; k < 10; k++) { r += work_a(n[0]); r += work_b(n[1]); r += work_c(n[2]); r += work_d(n[3]); }
  printf("%lu\n", r & 1);
  return 0;
}
