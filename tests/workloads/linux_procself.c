/* What exec gave the program, read back through /proc/self: auxv (each entry what
 * getauxval says: abseil and Chromium read the vDSO's address there), cmdline and
 * environ. Each check prints one line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

static size_t slurp(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

int main(int argc, char **argv) {
    static char buf[1 << 16];
    size_t n = slurp("/proc/self/auxv", buf, sizeof buf);
    unsigned long *aux = (unsigned long *)buf;
    size_t entries = 0, same = 0, ended = 0;
    for (size_t i = 0; i + 1 < n / 8; i += 2) {
        entries++;
        if (aux[i] == AT_NULL) {
            ended = 1;
            break;
        }
        /* (glibc's AT_HWCAP* are what it made of them.) */
        unsigned long t = aux[i];
        if (t == AT_PHDR || t == AT_ENTRY || t == AT_PAGESZ || t == AT_RANDOM || t == AT_EXECFN
            || t == AT_BASE || t == AT_UID || t == AT_SYSINFO_EHDR)
            same += getauxval(t) == aux[i + 1] ? 1 : 1000;
    }
    printf("auxv: ends with AT_NULL %s, entries as getauxval says: %s\n", ended ? "yes" : "no",
           same >= 6 && same < 1000 ? "yes" : "no");
    n = slurp("/proc/self/cmdline", buf, sizeof buf);
    size_t want = 0;
    for (int i = 0; i < argc; i++) want += strlen(argv[i]) + 1;
    printf("cmdline: %zu bytes, argv's %s, second argument '%s'\n", n, n == want ? "yes" : "no",
           argc > 1 ? buf + strlen(buf) + 1 : "");
    /* A program may rewrite its arguments in place (setproctitle): cmdline follows. */
    if (argc > 1) {
        argv[1][0] = 'X';
        slurp("/proc/self/cmdline", buf, sizeof buf);
        printf("after rewriting: '%s'\n", buf + strlen(buf) + 1);
    }
    n = slurp("/proc/self/environ", buf, sizeof buf);
    const char *home = getenv("PATH");
    printf("environ: PATH=%s\n", home && memmem(buf, n, home, strlen(home)) ? "found" : "missing");
    return 0;
}
