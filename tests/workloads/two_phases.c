/* Two functions whose shares of the run are set by the arguments, for `lbrprof diff` tests:
 *
 *   two_phases A_ITERATIONS B_ITERATIONS
 *
 * Equal arguments split the time about evenly between work_a and work_b; a larger B makes
 * work_b the regression. Built by tests/diff.rs with gcc -O1 -g -fno-omit-frame-pointer.
 */
#include <stdlib.h>
#include <stdio.h>
__attribute__((noinline)) unsigned long work_a(unsigned long n) { volatile unsigned long s = 1; for (unsigned long i = 0; i < n; i++) s = s * 31 + i; return s; }
__attribute__((noinline)) unsigned long work_b(unsigned long n) { volatile unsigned long s = 7; for (unsigned long i = 0; i < n; i++) s = s * 17 + (i >> 1); return s; }
int main(int argc, char **argv) {
  unsigned long a = strtoul(argv[1], 0, 0), b = strtoul(argv[2], 0, 0), r = 0;
  for (int k = 0; k < 20; k++) { r += work_a(a); r += work_b(b); }
  printf("%lu\n", r); return 0; }
