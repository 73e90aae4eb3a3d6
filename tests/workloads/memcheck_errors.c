/* Two memory errors for valgrind's memcheck to report when it runs this program inside
 * lbrprof's VM (valgrind runs its client under its own translator: signal-driven stack
 * growth, /proc/self/fd, mappings at fixed addresses): a write one past a heap block and
 * a block never freed. Built with -O0 so the compiler keeps the bad write. */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    int *p = malloc(10 * sizeof *p);
    p[10] = 1;
    free(p);
    char *q = malloc(7);
    q[0] = 'x';
    printf("done %c\n", q[0]);
    return 0;
}
