/* mprotect(PROT_NONE) keeps a page's contents, as on Linux: a program writes data,
 * makes it inaccessible (a guard, a GC's or JIT's trick, a sanitizer's quarantine),
 * touches it (SIGSEGV, SEGV_ACCERR, caught with a handler and siglongjmp), makes it
 * accessible again and finds its data. For private anonymous memory (whole mappings and
 * a part of one, splitting it), a modified private file mapping, shared anonymous memory
 * across fork, read-only zero memory, MAP_NORESERVE memory; through fork, mremap,
 * madvise(MADV_DONTNEED), munmap, and the kernel's own accesses (EFAULT). Each step
 * prints one line; nothing printed depends on addresses or pids. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096
#define RW (PROT_READ | PROT_WRITE)

static sigjmp_buf env;
static volatile uintptr_t fault_addr;
static volatile int fault_code;

static void on_segv(int sig, siginfo_t *si, void *ctx) {
    (void)sig;
    (void)ctx;
    fault_addr = (uintptr_t)si->si_addr;
    fault_code = si->si_code;
    siglongjmp(env, 1);
}

/* The byte at `p`, or minus the si_code of the SIGSEGV reading it raised. */
static int try_read(volatile unsigned char *p) {
    if (sigsetjmp(env, 1)) return -fault_code;
    return *p;
}

/* 0 when writing `v` at `p` worked, else the si_code of the SIGSEGV. */
static int try_write(volatile unsigned char *p, unsigned char v) {
    if (sigsetjmp(env, 1)) return fault_code;
    *p = v;
    return 0;
}

/* "yes" when the last fault was at `p`. */
static const char *at(volatile void *p) { return fault_addr == (uintptr_t)p ? "yes" : "no"; }

static unsigned char pattern(size_t i, unsigned seed) {
    return (unsigned char)((i * 131 + seed * 7 + (i >> 12)) & 0xff);
}

static void fill(unsigned char *p, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++) p[i] = pattern(i, seed);
}

/* The number of bytes of `p[from..to)` that differ from the pattern `fill` wrote. */
static size_t wrong(const unsigned char *p, size_t from, size_t to, unsigned seed) {
    size_t n = 0;
    for (size_t i = from; i < to; i++) n += p[i] != pattern(i, seed);
    return n;
}

static size_t nonzero(const unsigned char *p, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += p[i] != 0;
    return n;
}

static unsigned char *anon(size_t len, int prot, int flags) {
    unsigned char *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

static void private_anonymous(void) {
    size_t len = 8 * PG;
    unsigned char *p = anon(len, RW, 0);
    fill(p, len, 1);
    int r = mprotect(p, len, PROT_NONE);
    int code = -try_read(p + 3 * PG + 17);
    printf("anon: mprotect none %d, read si_code %d at the address %s\n", r, code,
           at(p + 3 * PG + 17));
    code = try_write(p + 5 * PG, 1);
    printf("anon: write si_code %d at the address %s\n", code, at(p + 5 * PG));
    r = mprotect(p, len, PROT_READ);
    printf("anon: mprotect read %d, wrong bytes %zu\n", r, wrong(p, 0, len, 1));
    printf("anon: write of read-only si_code %d\n", try_write(p, 1));
    r = mprotect(p, len, RW);
    printf("anon: mprotect read-write %d, wrong bytes %zu\n", r, wrong(p, 0, len, 1));
    p[0] = 0;
    printf("anon: writes again %d\n", p[0]);

    /* A part of it: the mapping splits, the rest stays usable meanwhile. */
    fill(p, len, 2);
    r = mprotect(p + 2 * PG, 3 * PG, PROT_NONE);
    int reads[4] = {try_read(p + PG), -try_read(p + 2 * PG), -try_read(p + 5 * PG - 1),
                    try_read(p + 5 * PG)};
    printf("part: pages 2-4 none %d: page 1 %s, page 2 %d, page 4 %d, page 5 %s\n", r,
           reads[0] == pattern(PG, 2) ? "ok" : "wrong", reads[1], reads[2],
           reads[3] == pattern(5 * PG, 2) ? "ok" : "wrong");
    p[6 * PG] = 0;
    p[6 * PG] = pattern(6 * PG, 2);
    r = mprotect(p + 3 * PG, PG, RW);
    size_t bad = wrong(p, 3 * PG, 4 * PG, 2);
    code = -try_read(p + 2 * PG);
    printf("part: page 3 read-write %d, wrong bytes %zu, page 2 still si_code %d\n", r, bad,
           code);
    r = mprotect(p, len, RW);
    printf("part: all read-write %d, wrong bytes %zu\n", r, wrong(p, 0, len, 2));

    /* The kernel's accesses on the program's behalf: EFAULT, and nothing written. */
    int fds[2];
    if (pipe(fds) != 0) exit(1);
    mprotect(p, PG, PROT_NONE);
    errno = 0;
    ssize_t n = write(fds[1], p, 16);
    printf("syscall: write from PROT_NONE %zd %s\n", n, errno == EFAULT ? "EFAULT" : "?");
    if (write(fds[1], "0123456789", 10) != 10) exit(1);
    errno = 0;
    n = read(fds[0], p, 10);
    printf("syscall: read into PROT_NONE %zd %s\n", n, errno == EFAULT ? "EFAULT" : "?");
    mprotect(p, PG, RW);
    printf("syscall: after restore wrong bytes %zu\n", wrong(p, 0, len, 2));
    n = read(fds[0], p, 10);
    printf("syscall: read %zd '%.10s'\n", n, (char *)p);
    close(fds[0]);
    close(fds[1]);

    /* MADV_DONTNEED throws the contents away, PROT_NONE or not. */
    fill(p, len, 3);
    mprotect(p, len, PROT_NONE);
    r = madvise(p, 2 * PG, MADV_DONTNEED);
    mprotect(p, len, PROT_READ);
    printf("dontneed: madvise of PROT_NONE pages 0-1 %d, non-zero bytes there %zu\n", r,
           nonzero(p, 2 * PG));
    printf("dontneed: wrong bytes in the rest %zu\n", wrong(p, 2 * PG, len, 3));

    /* munmap of PROT_NONE memory, and a new mapping in its place: zeros. */
    mprotect(p, len, PROT_NONE);
    printf("munmap: %d\n", munmap(p, len));
    unsigned char *q = mmap(p, len, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    printf("munmap: mapped again %s, non-zero bytes %zu\n", q == p ? "in place" : "elsewhere",
           nonzero(q, len));
    munmap(q, len);
}

/* Many round trips over a big region: no memory is lost on the way. */
static void many_round_trips(void) {
    size_t len = (size_t)32 << 20;
    unsigned char *p = anon(len, RW, 0);
    for (size_t i = 0; i < len; i += PG) p[i] = (unsigned char)(i / PG);
    int bad = 0;
    for (int round = 0; round < 20; round++) {
        bad |= mprotect(p, len, PROT_NONE);
        bad |= mprotect(p, len, RW);
    }
    size_t wrong_pages = 0;
    for (size_t i = 0; i < len; i += PG) wrong_pages += p[i] != (unsigned char)(i / PG);
    printf("round trips: 20 over 32 MiB %d, wrong pages %zu\n", bad, wrong_pages);
    munmap(p, len);
}

static void file_private(void) {
    char path[] = "/tmp/lbrprof-protnone-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        exit(1);
    }
    unlink(path);
    size_t len = 3 * PG;
    unsigned char *buf = malloc(len);
    fill(buf, len, 4);
    if (write(fd, buf, len) != (ssize_t)len) exit(1);
    unsigned char *p = mmap(NULL, len, RW, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        perror("mmap file");
        exit(1);
    }
    memcpy(p + PG + 100, "modified in memory", 18);
    int r = mprotect(p, len, PROT_NONE);
    printf("file: mprotect none %d, read si_code %d\n", r, -try_read(p + PG + 100));
    r = mprotect(p, len, PROT_READ);
    size_t bad = wrong(p, 0, PG + 100, 4) + wrong(p, PG + 118, len, 4);
    printf("file: mprotect read %d, '%.18s', other bytes wrong %zu\n", r, (char *)p + PG + 100,
           bad);
    /* A part, then the rest. */
    mprotect(p, len, RW);
    p[2 * PG + 1] = 'x';
    r = mprotect(p + 2 * PG, PG, PROT_NONE);
    printf("file: page 2 none %d, page 1 reads '%.8s'\n", r, (char *)p + PG + 100);
    r = mprotect(p + 2 * PG, PG, PROT_READ);
    printf("file: page 2 back %d, byte '%c'\n", r, p[2 * PG + 1]);
    unsigned char on_disk[18];
    if (pread(fd, on_disk, 18, PG + 100) != 18) exit(1);
    printf("file: on disk unchanged %s\n", memcmp(on_disk, buf + PG + 100, 18) == 0 ? "yes" : "no");
    munmap(p, len);
    close(fd);
    free(buf);
}

static void shared_anonymous(void) {
    size_t len = 4 * PG;
    unsigned char *p = mmap(NULL, len, RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) exit(1);
    fill(p, len, 5);
    int r = mprotect(p, len, PROT_NONE);
    printf("shared: mprotect none %d, read si_code %d\n", r, -try_read(p + PG));
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        printf("shared child: read si_code %d\n", -try_read(p));
        r = mprotect(p, len, RW);
        printf("shared child: mprotect read-write %d, wrong bytes %zu\n", r, wrong(p, 0, len, 5));
        memcpy(p + 2 * PG, "from the child", 14);
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    printf("shared: child exit %d, still PROT_NONE here: si_code %d\n", WEXITSTATUS(status),
           -try_read(p + 2 * PG));
    r = mprotect(p, len, PROT_READ);
    printf("shared: mprotect read %d, reads '%.14s', other bytes wrong %zu\n", r,
           (char *)p + 2 * PG, wrong(p, 0, 2 * PG, 5));
    munmap(p, len);
}

static void private_fork(void) {
    size_t len = 4 * PG;
    unsigned char *p = anon(len, RW, 0);
    fill(p, len, 6);
    mprotect(p + PG, 2 * PG, PROT_NONE);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int code = -try_read(p + PG);
        printf("fork child: read si_code %d, page 0 wrong %zu\n", code, wrong(p, 0, PG, 6));
        int r = mprotect(p, len, RW);
        printf("fork child: mprotect read-write %d, wrong bytes %zu\n", r, wrong(p, 0, len, 6));
        memset(p, 0xee, len);
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    printf("fork: child exit %d, read si_code %d\n", WEXITSTATUS(status), -try_read(p + 2 * PG));
    int r = mprotect(p, len, RW);
    printf("fork: mprotect read-write %d, wrong bytes %zu\n", r, wrong(p, 0, len, 6));
    munmap(p, len);
}

static void moved_and_special(void) {
    /* mremap moves PROT_NONE pages with their contents. */
    size_t len = 4 * PG;
    unsigned char *p = anon(len + PG, RW, 0);
    fill(p, len, 7);
    mprotect(p, len, PROT_NONE);
    /* A mapping right above it (its own last page), so that growing must move it. */
    void *above = mmap(p + len, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    unsigned char *m = mremap(p, len, 2 * len, MREMAP_MAYMOVE);
    if (m == MAP_FAILED) {
        printf("mremap: failed (%s)\n", strerror(errno));
    } else {
        int code = -try_read(m);
        printf("mremap: ok, moved %s, read si_code %d\n", m != p ? "yes" : "no", code);
        int r = mprotect(m, 2 * len, RW);
        printf("mremap: mprotect read-write %d, wrong bytes %zu, grown part non-zero %zu\n", r,
               wrong(m, 0, len, 7), nonzero(m + len, len));
        munmap(m, 2 * len);
    }
    munmap(above, PG);

    /* Read-only zero memory, PROT_NONE and back: zeros, and writable after. */
    unsigned char *z = anon(4 * PG, PROT_READ, 0);
    int r = mprotect(z, 4 * PG, PROT_NONE);
    int code = -try_read(z + PG);
    printf("zero: none %d, read si_code %d\n", r, code);
    r = mprotect(z, 4 * PG, PROT_READ);
    printf("zero: read %d, non-zero %zu\n", r, nonzero(z, 4 * PG));
    mprotect(z, 4 * PG, RW);
    z[PG] = 9;
    printf("zero: writable %d\n", z[PG]);
    munmap(z, 4 * PG);

    /* MAP_NORESERVE memory (backed at first touch): the touched pages keep theirs. */
    size_t big = (size_t)1 << 30;
    unsigned char *l = anon(big, RW, MAP_NORESERVE);
    fill(l + 5 * PG, PG, 8);
    fill(l + (big >> 1), PG, 9);
    r = mprotect(l, big, PROT_NONE);
    code = -try_read(l + 5 * PG);
    int untouched = -try_read(l + 77 * PG);
    printf("lazy: none %d, read si_code %d, untouched read si_code %d\n", r, code, untouched);
    unsigned char vec[2];
    r = mincore(l + 5 * PG, PG, vec);
    printf("lazy: mincore %d, resident %d\n", r, vec[0] & 1);
    r = mprotect(l, big, RW);
    printf("lazy: read-write %d, wrong bytes %zu %zu, untouched %d\n", r,
           wrong(l + 5 * PG, 0, PG, 8), wrong(l + (big >> 1), 0, PG, 9), l[77 * PG]);
    mprotect(l, big, PROT_NONE);
    madvise(l + 5 * PG, PG, MADV_DONTNEED);
    mprotect(l, big, PROT_READ);
    printf("lazy: after dontneed non-zero %zu, other page wrong %zu\n", nonzero(l + 5 * PG, PG),
           wrong(l + (big >> 1), 0, PG, 9));
    munmap(l, big);
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
    private_anonymous();
    many_round_trips();
    file_private();
    shared_anonymous();
    private_fork();
    moved_and_special();
    return 0;
}
