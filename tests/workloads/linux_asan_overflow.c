/* A heap-buffer-overflow AddressSanitizer reports (and ends the program for). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    (void)argv;
    char *p = malloc(16);
    memset(p, 'x', 16);
    printf("before the overflow\n");
    fflush(stdout);
    volatile char c = p[16 + argc - 1]; /* one byte past the end */
    printf("read %d\n", c);
    free(p);
    return 0;
}
