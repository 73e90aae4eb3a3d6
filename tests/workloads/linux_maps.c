/* /proc/self/maps as a program sees it, for tests/linux_compat.rs: the program's own
 * mappings (its executable, its stack, its heap, an anonymous mapping split by mprotect),
 * and glibc's pthread_getattr_np, which finds the main thread's stack there. Prints only
 * what does not depend on where things were placed. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The perms and name of the line of /proc/self/maps that contains `addr`. Read with
 * open/read into a static buffer: stdio's buffer could be mapped where we look. */
static char text[1 << 16];

static int find(const char *file, const void *addr, char *perms, char *name) {
    int fd = open(file, O_RDONLY);
    if (fd < 0)
        return -1;
    size_t len = 0;
    ssize_t got;
    while (len < sizeof text - 1 && (got = read(fd, text + len, sizeof text - 1 - len)) > 0)
        len += got;
    close(fd);
    text[len] = 0;
    int found = 0;
    for (char *line = text; *line;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = 0;
        unsigned long lo, hi;
        char p[8] = "", n[4000] = "";
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %3999[^\n]", &lo, &hi, p, n) >= 3 &&
            (unsigned long)addr >= lo && (unsigned long)addr < hi) {
            strcpy(perms, p);
            char *s = n;
            while (*s == ' ')
                s++;
            strcpy(name, s);
            found = 1;
        }
        if (!end)
            break;
        line = end + 1;
    }
    return found;
}

int main(void) {
    char perms[8], name[4000], exe[4000];
    int local = 0;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    int r = find("/proc/self/maps", (void *)main, perms, name);
    printf("main: found %d, %s, the executable %s\n", r, perms, strcmp(name, exe) == 0 ? "yes" : name);
    r = find("/proc/self/maps", &local, perms, name);
    printf("local: found %d, %s %s\n", r, perms, name);
    void *heap = malloc(100);
    r = find("/proc/self/maps", heap, perms, name);
    printf("malloc: found %d, %s %s\n", r, perms, name);
    long pg = sysconf(_SC_PAGESIZE);
    char *m = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(m + pg, pg, PROT_NONE);
    for (int i = 0; i < 3; i++) {
        r = find("/proc/self/maps", m + i * pg, perms, name);
        printf("anonymous page %d: found %d, %s '%s'\n", i, r, perms, name);
    }
    munmap(m + pg, pg);
    printf("unmapped page: found %d\n", find("/proc/self/maps", m + pg, perms, name));
    r = find("/proc/thread-self/maps", (void *)main, perms, name);
    printf("thread-self: found %d\n", r);
    pthread_attr_t a;
    void *lo;
    size_t size;
    r = pthread_getattr_np(pthread_self(), &a);
    pthread_attr_getstack(&a, &lo, &size);
    printf("pthread_getattr_np: %d, local inside %s, at least 16 KiB %s\n", r,
           (char *)&local >= (char *)lo && (char *)&local < (char *)lo + size ? "yes" : "no",
           size >= 16384 ? "yes" : "no");
    return 0;
}
