/* A tiny JIT: writes one function's machine code into anonymous memory, makes it
 * executable with mprotect (W^X, as V8 and the JVM do), optionally writes perf's map
 * (/tmp/perf-PID.map) naming it, and calls it in a loop. Used by tests/jit.rs to check
 * that lbrprof records anonymous code made executable in the VM and names it from the
 * guest process's map, and says so when the map is missing.
 *
 * usage: jit_anon CALLS [map]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* int f(int x) { int s = x; for (int i = 0; i < 1000; i++) s += i; return s; } */
static const unsigned char code[] = {
    0x89, 0xf8,                         /* mov eax, edi */
    0x31, 0xc9,                         /* xor ecx, ecx */
    0x01, 0xc8,                         /* loop: add eax, ecx */
    0xff, 0xc1,                         /* inc ecx */
    0x81, 0xf9, 0xe8, 0x03, 0x00, 0x00, /* cmp ecx, 1000 */
    0x7c, 0xf4,                         /* jl loop */
    0xc3,                               /* ret */
};

int main(int argc, char **argv) {
    long calls = argc > 1 ? atol(argv[1]) : 100000;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *mem = mmap(NULL, page, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memcpy(mem, code, sizeof code);
    if (mprotect(mem, page, PROT_READ | PROT_EXEC) != 0) {
        perror("mprotect");
        return 1;
    }
    if (argc > 2 && strcmp(argv[2], "map") == 0) {
        char path[64];
        snprintf(path, sizeof path, "/tmp/perf-%d.map", (int)getpid());
        FILE *f = fopen(path, "w");
        if (!f) {
            perror(path);
            return 1;
        }
        fprintf(f, "%lx %zx jitted_sum_loop\n", (unsigned long)mem, sizeof code);
        fclose(f);
    }
    int (*fn)(int) = (int (*)(int))mem;
    unsigned long total = 0;
    for (long i = 0; i < calls; i++)
        total += (unsigned)fn((int)(i & 0xff));
    printf("%lu\n", total);
    return 0;
}
