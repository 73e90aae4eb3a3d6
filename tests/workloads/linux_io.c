/* A program for the Linux-personality tests (tests/linux.rs): it exercises the system
 * calls ordinary programs make and prints what it saw, so its output under
 * `lbrprof run --vm --` can be compared byte for byte with a native run.
 * Usage: linux_io FILE DIR EXIT_CODE */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s FILE DIR EXIT_CODE\n", argv[0]);
        return 2;
    }
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    const char *e = getenv("LINUX_IO_TEST");
    printf("env=%s\n", e ? e : "(unset)");

    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    struct stat st;
    fstat(fd, &st);
    printf("size=%lld\n", (long long)st.st_size);
    char buf[64];
    ssize_t n = read(fd, buf, 10);
    printf("read=%zd [%.*s]\n", n, (int)n, buf);
    n = pread(fd, buf, 5, 3);
    printf("pread=%zd [%.*s]\n", n, (int)n, buf);
    printf("lseek=%lld\n", (long long)lseek(fd, 0, SEEK_END));
    char *m = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 1; }
    unsigned sum = 0;
    for (off_t i = 0; i < st.st_size; i++) sum = sum * 31 + (unsigned char)m[i];
    printf("mmap sum=%u\n", sum);
    munmap(m, st.st_size);
    int fd2 = dup(fd);
    printf("dup>%d close=%d\n", fd2 > fd, close(fd2));
    close(fd);
    printf("bad read=%zd\n", read(fd, buf, 1));

    /* The heap: brk for small blocks, mmap for big ones. */
    size_t big = 8 << 20;
    char *p = malloc(big);
    memset(p, 7, big);
    p = realloc(p, 2 * big);
    memset(p + big, 9, big);
    unsigned long t = 0;
    for (size_t i = 0; i < 2 * big; i += 4096) t += p[i];
    free(p);
    printf("heap=%lu\n", t);
    char *small[1000];
    for (int i = 0; i < 1000; i++) small[i] = malloc(100 + i);
    for (int i = 0; i < 1000; i++) free(small[i]);
    void *rw = mmap(NULL, 3 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(rw, 4096, PROT_READ | PROT_WRITE);
    ((char *)rw)[100] = 1;
    printf("mprotect ok=%d\n", ((char *)rw)[100]);

    /* A directory listing, sorted. */
    DIR *d = opendir(argv[2]);
    char *names[64];
    int k = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) && k < 64)
        if (de->d_name[0] != '.') names[k++] = strdup(de->d_name);
    if (d) closedir(d);
    qsort(names, k, sizeof names[0], cmp);
    for (int i = 0; i < k; i++) printf("entry %s\n", names[i]);

    char cwd[4096];
    printf("cwd ok=%d\n", getcwd(cwd, sizeof cwd) != NULL);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    printf("clock ok=%d\n", ts.tv_sec > 0 || ts.tv_nsec > 0);
    printf("access=%d\n", access(argv[1], R_OK));
    printf("missing=%d\n", open("/nonexistent/lbrprof", O_RDONLY));
    fprintf(stderr, "to stderr\n");
    fflush(stdout);
    return atoi(argv[3]);
}
