/* Memory shared between processes, for the Linux-personality tests: every line it
 * prints must be the same natively and under `lbrprof run --vm --`.
 *
 *   a  MAP_SHARED|MAP_ANONYMOUS, fork, the child writes, the parent reads
 *   b  process-shared pthread mutex + condvar and sem_init(pshared=1) in shared
 *      memory: 3 children increment two counters N times each
 *   c  shm_open + ftruncate + mmap in two processes (each opens the name itself)
 *   d  a writable MAP_SHARED mapping of a regular file (shared.dat in the working
 *      directory): written through the mapping, read with read()/pread() before and
 *      after msync/munmap, written with write() and seen in a mapping
 *   e  munmap and mremap (shrink, grow by moving) of parts of shared regions
 *
 * Arguments: the parts to run (default: all), e.g. `linux_shared b`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096

static void die(const char *what) {
    printf("FAILED: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *map_shared_anon(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap shared anonymous");
    return p;
}

static int wait_child(pid_t pid) {
    int st;
    if (waitpid(pid, &st, 0) != pid)
        die("waitpid");
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static uint32_t sum(const unsigned char *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static void part_a(void) {
    unsigned char *m = map_shared_anon(4 * PG);
    m[0] = 'p';
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        for (int i = 0; i < 4 * PG; i++)
            m[i] = (unsigned char)(i * 7 + 3);
        strcpy((char *)m + PG + 10, "written by the child");
        _exit(m[0] == 3 ? 5 : 6);
    }
    int code = wait_child(pid);
    printf("a: child exit %d, parent reads \"%s\", page 3 byte 100 = %d, hash %08x\n", code,
           (char *)m + PG + 10, m[3 * PG + 100], sum(m, 4 * PG));
    munmap(m, 4 * PG);
}

struct counters {
    pthread_mutex_t lock;
    pthread_cond_t done_cv;
    sem_t sem;
    long by_mutex;
    long by_sem;
    int done;
};

static void part_b(void) {
    enum { CHILDREN = 3, N = 20000 };
    struct counters *c = map_shared_anon(sizeof *c);
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_condattr_init(&ca);
    pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
    if (pthread_mutex_init(&c->lock, &ma) || pthread_cond_init(&c->done_cv, &ca))
        die("pthread init");
    if (sem_init(&c->sem, 1, 1))
        die("sem_init");
    pid_t kids[CHILDREN];
    for (int k = 0; k < CHILDREN; k++) {
        kids[k] = fork();
        if (kids[k] < 0)
            die("fork");
        if (kids[k] == 0) {
            for (int i = 0; i < N; i++) {
                pthread_mutex_lock(&c->lock);
                c->by_mutex++;
                pthread_mutex_unlock(&c->lock);
                while (sem_wait(&c->sem) && errno == EINTR)
                    ;
                c->by_sem++;
                sem_post(&c->sem);
            }
            pthread_mutex_lock(&c->lock);
            c->done++;
            pthread_cond_signal(&c->done_cv);
            pthread_mutex_unlock(&c->lock);
            _exit(0);
        }
    }
    pthread_mutex_lock(&c->lock);
    while (c->done < CHILDREN)
        pthread_cond_wait(&c->done_cv, &c->lock);
    int done = c->done;
    pthread_mutex_unlock(&c->lock);
    int bad = 0;
    for (int k = 0; k < CHILDREN; k++)
        bad += wait_child(kids[k]) != 0;
    printf("b: %d children done (condvar), %d failed; by mutex %ld, by semaphore %ld (want %d)\n",
           done, bad, c->by_mutex, c->by_sem, CHILDREN * N);
    sem_destroy(&c->sem);
    munmap(c, sizeof *c);
}

static void part_c(void) {
    char name[64];
    snprintf(name, sizeof name, "/lbrprof-shared-%d", (int)getpid());
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        die("shm_open");
    if (ftruncate(fd, 2 * PG))
        die("ftruncate");
    char *m = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        die("mmap shm");
    strcpy(m, "parent was here");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        /* The child maps the object on its own, as an unrelated process would. */
        int cfd = shm_open(name, O_RDWR, 0);
        if (cfd < 0)
            _exit(7);
        char *cm = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0);
        if (cm == MAP_FAILED)
            _exit(8);
        int saw = strcmp(cm, "parent was here") == 0;
        strcpy(cm + PG + 1, "child wrote page 2");
        munmap(cm, 2 * PG);
        close(cfd);
        _exit(saw ? 0 : 9);
    }
    int code = wait_child(pid);
    struct stat st;
    fstat(fd, &st);
    printf("c: child exit %d, parent reads \"%s\", object size %lld\n", code, m + PG + 1,
           (long long)st.st_size);
    munmap(m, 2 * PG);
    close(fd);
    if (shm_unlink(name))
        die("shm_unlink");
}

static void part_d(void) {
    const char *path = "shared.dat";
    enum { SIZE = 10000 };
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("open shared.dat");
    char buf[SIZE + 100];
    for (int i = 0; i < SIZE; i++)
        buf[i] = 'a' + i % 26;
    if (write(fd, buf, SIZE) != SIZE)
        die("write");
    /* Three pages over a file of two and a half. */
    char *m = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        die("mmap file");
    printf("d: mapping starts \"%.6s\", byte 9999 '%c', past the end %d\n", m, m[9999], m[10000]);
    memcpy(m, "MAPPED", 6);
    memcpy(m + 5000, "middle", 6);
    memcpy(m + 9994, "theend", 6);
    m[10001] = 'X'; /* past the end of the file: never written to it */
    char got[8] = {0};
    if (pread(fd, got, 6, 5000) != 6)
        die("pread");
    printf("d: pread sees \"%s\" before msync\n", got);
    char *pv = mmap(NULL, 2 * PG, PROT_READ, MAP_PRIVATE, fd, 0);
    if (pv == MAP_FAILED)
        die("mmap private");
    printf("d: a private mapping made now sees \"%.6s\"\n", pv + 5000);
    munmap(pv, 2 * PG);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        memcpy(m + 100, "CHILD", 5);
        _exit(0);
    }
    wait_child(pid);
    memset(got, 0, sizeof got);
    if (pread(fd, got, 5, 100) != 5)
        die("pread");
    printf("d: pread sees the child's \"%s\"\n", got);
    /* write() through the descriptor shows in the mapping. */
    if (pwrite(fd, "WRITE", 5, 200) != 5)
        die("pwrite");
    printf("d: mapping sees pwrite's \"%.5s\"\n", m + 200);
    /* So does sendfile from another file. */
    int src = open("source.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (src < 0 || write(src, "SENDFILE", 8) != 8)
        die("source.dat");
    off_t from = 0;
    if (lseek(fd, 300, SEEK_SET) != 300 || sendfile(fd, src, &from, 8) != 8)
        die("sendfile");
    close(src);
    printf("d: mapping sees sendfile's \"%.8s\"\n", m + 300);
    if (msync(m, 3 * PG, MS_SYNC))
        die("msync");
    if (munmap(m, 3 * PG))
        die("munmap");
    if (lseek(fd, 0, SEEK_SET) != 0)
        die("lseek");
    ssize_t n = read(fd, buf, SIZE + 100);
    printf("d: read after munmap: %zd bytes, \"%.6s\" \"%.5s\" \"%.5s\" \"%.6s\" \"%.6s\", hash %08x\n", n,
           buf, buf + 100, buf + 200, buf + 5000, buf + 9994, sum((unsigned char *)buf, SIZE));
    /* A second mapping, written and never synced: the file has it after exit. */
    m = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, PG);
    if (m == MAP_FAILED)
        die("mmap file again");
    memcpy(m + 1, "LAST WORDS", 10);
    close(fd);
    printf("d: left \"%.10s\" at offset 4097\n", m + 1);
    /* Read-only mappings of a file opened read-only cannot be made writable. */
    int ro = open(path, O_RDONLY);
    char *r = mmap(NULL, PG, PROT_READ, MAP_SHARED, ro, 0);
    if (r == MAP_FAILED)
        die("mmap read-only");
    printf("d: read-only mapping sees \"%.6s\"; mprotect PROT_WRITE: %s; mmap PROT_WRITE: %s\n", r,
           mprotect(r, PG, PROT_READ | PROT_WRITE) ? strerror(errno) : "ok",
           mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0) == MAP_FAILED ? strerror(errno)
                                                                                 : "ok");
    close(ro);
}

static void part_e(void) {
    /* Anonymous: drop a page in the middle, shrink the head with mremap. */
    unsigned char *m = map_shared_anon(8 * PG);
    if (munmap(m + 2 * PG, PG))
        die("munmap a page");
    if (mremap(m, 2 * PG, PG, 0) != m)
        die("mremap shrink");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        m[0] = 11;
        for (int p = 3; p < 8; p++)
            m[p * PG + 5] = (unsigned char)(p * 10);
        _exit(0);
    }
    wait_child(pid);
    printf("e: anonymous after munmap/mremap: %d %d %d %d %d %d\n", m[0], m[3 * PG + 5],
           m[4 * PG + 5], m[5 * PG + 5], m[6 * PG + 5], m[7 * PG + 5]);
    munmap(m, PG);
    munmap(m + 3 * PG, 5 * PG);

    /* A shared file mapping grown with mremap when it cannot grow in place: it moves. */
    char name[64];
    snprintf(name, sizeof name, "/lbrprof-grow-%d", (int)getpid());
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        die("shm_open");
    shm_unlink(name);
    if (ftruncate(fd, 16 * PG))
        die("ftruncate");
    char *a = mmap(NULL, 5 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (a == MAP_FAILED)
        die("mmap");
    munmap(a + 4 * PG, PG); /* a hole, then something in the way */
    char *block = mmap(a + 4 * PG, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (block == MAP_FAILED)
        die("mmap blocker");
    strcpy(a + 3 * PG, "before the move");
    char *b = mremap(a, 4 * PG, 8 * PG, MREMAP_MAYMOVE);
    if (b == MAP_FAILED)
        die("mremap grow");
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        strcpy(b + 6 * PG, "child, page 7");
        _exit(strcmp(b + 3 * PG, "before the move") == 0 ? 0 : 1);
    }
    int code = wait_child(pid);
    printf("e: grown mapping %s, child exit %d, parent reads \"%s\"\n", b == a ? "stayed" : "moved",
           code, b + 6 * PG);
    char got[16] = {0};
    pread(fd, got, 13, 6 * PG);
    printf("e: the object has \"%s\"\n", got);
    munmap(b, 8 * PG);
    munmap(block, PG);
    close(fd);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *parts = argc > 1 ? argv[1] : "abcde";
    for (const char *p = parts; *p; p++) {
        switch (*p) {
        case 'a': part_a(); break;
        case 'b': part_b(); break;
        case 'c': part_c(); break;
        case 'd': part_d(); break;
        case 'e': part_e(); break;
        default: printf("unknown part %c\n", *p); return 2;
        }
    }
    return 0;
}
