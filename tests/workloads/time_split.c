/* A CPU-bound program whose time splits between two functions in a known ratio:
 * `hot_part` (about 80% of the user time) and `syscall_part` (about 20%, with a
 * write(2) and a getppid(2) every 4,096 iterations, so the program exits to its kernel
 * often). Usage: time_split [ROUNDS]. tests/vm_sampling.rs compares where guest LBR
 * snapshots of `record --vm` land with where host sampling of the native run lands. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile unsigned long sink;

__attribute__((noinline)) unsigned long hot_part(unsigned long n) {
    unsigned long s = n;
    for (unsigned long k = 0; k < 4000000; k++) s = s * 6364136223846793005UL + (k ^ (s >> 13));
    return s;
}

__attribute__((noinline)) unsigned long syscall_part(unsigned long n) {
    unsigned long s = n;
    int fd = open("/dev/null", O_WRONLY);
    for (unsigned long k = 0; k < 1000000; k++) {
        s = s * 6364136223846793005UL + (k ^ (s >> 13));
        if ((k & 4095) == 0) {
            char c = (char)s;
            if (write(fd, &c, 1) != 1) abort();
            getppid();
        }
    }
    close(fd);
    return s;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 100;
    unsigned long s = 0;
    for (int r = 0; r < rounds; r++) {
        s += hot_part(s);
        s += syscall_part(s);
    }
    sink = s;
    printf("%lu\n", s & 0xff);
    return 0;
}
