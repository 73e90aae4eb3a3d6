/* Random bytes from every source the VM serves (getrandom, /dev/urandom, AT_RANDOM,
 * and getrandom in a forked child), printed in hex, and work whose length depends on
 * them: exact-mode counts repeat only when the bytes do (tests/exact.rs). */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned long spin(const unsigned char *b, int n) {
    unsigned long x = 0, rounds = 0;
    for (int i = 0; i < n; i++) rounds += b[i];
    for (unsigned long i = 0; i < rounds * 8; i++) x = x * 31 + (i ^ (x >> 7));
    return x;
}

static void show(const char *what, const unsigned char *b, int n) {
    printf("%s ", what);
    for (int i = 0; i < n; i++) printf("%02x", b[i]);
    printf(" %lu\n", spin(b, n));
}

int main(void) {
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != sizeof b) return 1;
    show("getrandom", b, sizeof b);
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, b, sizeof b) != sizeof b) return 2;
    close(fd);
    show("urandom", b, sizeof b);
    show("at_random", (const unsigned char *)getauxval(AT_RANDOM), 16);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (getrandom(b, sizeof b, 0) != sizeof b) _exit(3);
        show("child", b, sizeof b);
        fflush(stdout);
        _exit(0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || status != 0) return 4;
    return 0;
}
