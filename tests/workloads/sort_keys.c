/* Several commands, threads and modules with known callers, for perf's sort keys and call
 * trees (tests/perf_report.rs):
 *
 *   sort_keys [ITERATIONS]
 *
 * The main thread runs leaf() through mid_a() and mid_b(); a thread named "spinner" runs
 * spin(); a forked child renamed "child" runs leaf() through mid_a() and copies memory
 * with libc's memcpy (a second module). Built with gcc -O1 -g -fno-omit-frame-pointer
 * -pthread.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

volatile unsigned long sink;
static char buf_a[1 << 16], buf_b[1 << 16];

__attribute__((noinline)) void leaf(unsigned long n) {
  for (unsigned long i = 0; i < n; i++) sink += i * i;
}
__attribute__((noinline)) void mid_a(unsigned long n) {
  leaf(n);
  for (unsigned long i = 0; i < n / 2; i++) sink ^= i;
}
__attribute__((noinline)) void mid_b(unsigned long n) {
  leaf(2 * n);
  sink++;
}
__attribute__((noinline)) void spin(unsigned long n) {
  for (unsigned long i = 0; i < n; i++) sink -= i;
}
__attribute__((noinline)) void copy(unsigned long n) {
  for (unsigned long i = 0; i < n / 1024; i++) {
    memcpy(buf_a, buf_b, sizeof buf_a);
    buf_b[i % sizeof buf_b] = (char)i;
  }
}
static void *spinner(void *arg) {
  prctl(PR_SET_NAME, "spinner");
  spin((unsigned long)arg * 3);
  return 0;
}
int main(int argc, char **argv) {
  unsigned long n = argc > 1 ? strtoul(argv[1], 0, 0) : 2000000;
  pid_t child = fork();
  if (child == 0) {
    prctl(PR_SET_NAME, "child");
    for (int r = 0; r < 20; r++) { mid_a(n); copy(n); }
    _exit(0);
  }
  pthread_t t;
  pthread_create(&t, 0, spinner, (void *)(n * 20));
  for (int r = 0; r < 20; r++) { mid_a(n); mid_b(n); }
  pthread_join(t, 0);
  waitpid(child, 0, 0);
  return 0;
}
