/* A 64 TiB MAP_NORESERVE mapping (as sanitizers map their shadow), touched at a few
 * scattered pages: it must be mapped, read as zeros where untouched, take the kernel's
 * writes (read(2) into an untouched page), keep what was written through fork, mprotect,
 * mremap and a partial munmap; an access the protection forbids is SIGSEGV with
 * SEGV_ACCERR, one where nothing is mapped SEGV_MAPERR, both at the faulting address.
 * Each step prints one line. With the argument "touch N", it writes N MiB of a lazy
 * mapping instead (more than the VM's memory ends the program). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* Write `v` at `p`: 0 when it worked, else the si_code of the SIGSEGV. */
static int try_write(volatile unsigned char *p, unsigned char v) {
    if (sigsetjmp(env, 1)) return fault_code;
    *p = v;
    return 0;
}

static int try_read(volatile unsigned char *p) {
    if (sigsetjmp(env, 1)) return -fault_code;
    return *p;
}

static int touch(size_t mib) {
    size_t len = mib << 20;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t off = 0; off < len; off += 4096) p[off] = 1;
    printf("touched %zu MiB\n", mib);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "touch") == 0) return touch(strtoul(argv[2], NULL, 0));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);

    size_t len = (size_t)64 << 40;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap 64 TiB");
        return 1;
    }
    printf("mapped 64 TiB\n");
    size_t step = (size_t)1 << 40; /* one page per TiB, and a few neighbours */
    for (size_t i = 0; i < 64; i++) p[i * step + (i * 4097) % 65536] = (unsigned char)(i + 1);
    unsigned long sum = 0;
    for (size_t i = 0; i < 64; i++) sum += p[i * step + (i * 4097) % 65536];
    printf("scattered sum %lu\n", sum);
    printf("untouched reads %d %d\n", p[12345], p[len - 1]);

    /* The kernel writes into untouched pages on the program's behalf. */
    int fds[2];
    if (pipe(fds) != 0) return 1;
    write(fds[1], "through a pipe", 15);
    char *buf = (char *)p + ((size_t)33 << 40) + 100;
    printf("read into untouched page: %zd '%s'\n", read(fds[0], buf, 15), buf);
    /* And reads untouched pages (zeros) on its behalf. */
    write(fds[1], p + ((size_t)40 << 40), 8);
    unsigned char z[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    read(fds[0], z, 8);
    printf("pipe of untouched page: %d%d%d%d%d%d%d%d\n", z[0], z[1], z[2], z[3], z[4], z[5],
           z[6], z[7]);

    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        p[5 * step] = 99;
        printf("child sees %d and writes %d\n", p[0], p[5 * step]);
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    printf("parent after child: %d %d, child exit %d\n", p[0], p[5 * step], WEXITSTATUS(status));

    /* Read-only: the written pages keep their bytes, writes fault with SEGV_ACCERR. */
    printf("mprotect read-only: %d\n", mprotect(p, len, PROT_READ));
    printf("read back %d, untouched %d\n", p[0], try_read(p + ((size_t)7 << 40) + 8192));
    unsigned char *target = p + ((size_t)9 << 40) + 3 * 4096 + 5;
    int code = try_write(target, 1);
    printf("write to read-only: si_code %d at the address: %s\n", code,
           fault_addr == (uintptr_t)target ? "yes" : "no");
    printf("mprotect none: %d\n", mprotect(p, len, PROT_NONE));
    code = -try_read(p + 4096);
    printf("read of PROT_NONE: si_code %d\n", code);
    printf("mprotect read-write: %d\n", mprotect(p, len, PROT_READ | PROT_WRITE));
    printf("writes again: %d\n", try_write(p + ((size_t)3 << 40), 7));

    /* Unmap the middle half: its pages are gone (SEGV_MAPERR), the rest stays. */
    printf("munmap middle: %d\n", munmap(p + ((size_t)16 << 40), (size_t)32 << 40));
    unsigned char *gone = p + ((size_t)20 << 40);
    code = -try_read(gone);
    printf("read unmapped: si_code %d at the address: %s\n", code,
           fault_addr == (uintptr_t)gone ? "yes" : "no");
    p[((size_t)50 << 40)] = 3;
    printf("upper part: %d\n", p[((size_t)50 << 40)]);
    int r = madvise(p + ((size_t)50 << 40), 4096, MADV_DONTNEED);
    printf("madvise dontneed: %d, reads %d\n", r, p[((size_t)50 << 40)]);
    printf("munmap all: %d %d\n", munmap(p, (size_t)16 << 40),
           munmap(p + ((size_t)48 << 40), (size_t)16 << 40));

    /* mremap moves a lazy mapping with its touched pages only. */
    size_t tib = (size_t)1 << 40;
    unsigned char *q = mmap(NULL, tib + 4096, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    q[12345] = 42;
    q[tib - 1] = 43;
    /* Another mapping right above it, so that growing must move it. */
    void *above = mmap(q + tib, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    unsigned char *m = mremap(q, tib, 2 * tib, MREMAP_MAYMOVE);
    printf("mremap grew 1 TiB to 2 TiB: %s, moved: %s\n", m == MAP_FAILED ? "failed" : "ok",
           m != q ? "yes" : "no");
    printf("moved contents %d %d %d %d\n", m[12345], m[tib - 1], m[tib + 5], m[2 * tib - 1]);
    m[tib + 5] = 44;
    printf("grown part writable: %d\n", m[tib + 5]);
    printf("munmap: %d %d\n", munmap(m, 2 * tib), above == MAP_FAILED ? -1 : munmap(above, 4096));
    return 0;
}
