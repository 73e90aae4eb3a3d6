/* A read-only anonymous reservation bigger than the VM's memory, as Starlark's Go
 * interpreter makes (4 GiB, PROT_READ, for tagged integers): it must succeed and read as
 * zeros; a page of it made writable is the program's own. Each step prints one line. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

int main(void) {
    size_t len = (size_t)4 << 30;
    unsigned char *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap 4 GiB PROT_READ");
        return 1;
    }
    printf("mapped 4 GiB read-only\n");
    unsigned sum = 0;
    for (size_t off = 0; off < len; off += (size_t)256 << 20) sum += p[off] + p[off + 4095];
    printf("zeros: %s\n", sum == 0 ? "yes" : "no");
    unsigned char *page = p + ((size_t)1 << 30);
    printf("mprotect one page RW: %d\n", mprotect(page, 4096, PROT_READ | PROT_WRITE));
    strcpy((char *)page, "written");
    printf("page reads back: %s, its neighbour: %d\n", (char *)page, page[4096]);
    printf("mprotect back to read-only: %d, still %s\n", mprotect(page, 4096, PROT_READ),
           (char *)page);
    printf("munmap: %d\n", munmap(p, len));
    return 0;
}
