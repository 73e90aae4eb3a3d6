/* File-system calls past open/read/write, as cp -a, tar, touch, mkfifo, ln -s and
 * tail -f use them: symlinks, FIFOs, file times (utimensat, futimens, utimes, utime),
 * truncate, fallocate, copy_file_range, sendfile, preadv/pwritev, inotify, memfd, and
 * the scheduling, persona and memory-policy queries. Each case prints one line. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/times.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <utime.h>

static const char *err(long r) { return r < 0 ? strerror(errno) : "ok"; }

static long mtime(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_mtime : -1;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    char dir[] = "files-XXXXXX";
    if (!mkdtemp(dir) || chdir(dir) != 0) return 1;

    int fd = open("a", O_RDWR | O_CREAT | O_TRUNC, 0644);
    (void)!write(fd, "hello, world\n", 13);
    printf("symlink: %s", err(symlink("a", "link")));
    char buf[64] = {0};
    ssize_t n = readlink("link", buf, sizeof buf);
    printf(", readlink %.*s\n", (int)n, buf);
    printf("mkfifo: %s", err(mkfifo("fifo", 0600)));
    struct stat st;
    lstat("fifo", &st);
    printf(", is a FIFO %s\n", S_ISFIFO(st.st_mode) ? "yes" : "no");
    int c = creat("made", 0600);
    printf("creat: %s, writable %s\n", err(c), write(c, "x", 1) == 1 ? "yes" : "no");

    /* (Each call before its printf: argument order is the compiler's choice.) */
    struct timespec ts[2] = {{1000000000, 5}, {1200000000, 7}};
    long r = utimensat(AT_FDCWD, "a", ts, 0);
    printf("utimensat: %s, mtime %ld\n", err(r), mtime("a"));
    ts[1].tv_sec = 1300000000;
    r = futimens(fd, ts);
    printf("futimens: %s, mtime %ld\n", err(r), mtime("a"));
    struct timeval tv[2] = {{1400000000, 0}, {1400000001, 0}};
    r = utimes("a", tv);
    printf("utimes: %s, mtime %ld\n", err(r), mtime("a"));
    struct utimbuf ub = {1500000000, 1500000002};
    r = utime("a", &ub);
    printf("utime: %s, mtime %ld\n", err(r), mtime("a"));
    ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_nsec = UTIME_OMIT;
    r = utimensat(AT_FDCWD, "a", ts, 0);
    printf("utimensat UTIME_OMIT: %s, mtime %ld\n", err(r), mtime("a"));
    ts[1].tv_nsec = 2000000000;
    r = utimensat(AT_FDCWD, "a", ts, 0);
    printf("utimensat bad nsec: %s\n", r < 0 && errno == EINVAL ? "EINVAL" : "wrong");

    r = truncate("a", 5);
    printf("truncate: %s", err(r));
    stat("a", &st);
    printf(", size %ld\n", (long)st.st_size);
    r = fallocate(fd, 0, 0, 8192);
    printf("fallocate: %s", err(r));
    fstat(fd, &st);
    printf(", size %ld\n", (long)st.st_size);

    int b = open("b", O_RDWR | O_CREAT | O_TRUNC, 0644);
    loff_t in_off = 1, out_off = 2;
    r = syscall(SYS_copy_file_range, fd, &in_off, b, &out_off, 3, 0);
    memset(buf, 0, sizeof buf);
    pread(b, buf, 5, 2);
    printf("copy_file_range: %ld, offsets %ld %ld, copied %s\n", r, (long)in_off, (long)out_off,
           buf);
    off_t off = 0;
    int s = open("s", O_RDWR | O_CREAT | O_TRUNC, 0644);
    r = sendfile(s, fd, &off, 4);
    printf("sendfile: %ld, offset %ld\n", r, (long)off);

    char x[3] = "xyz", y[4] = "1234";
    struct iovec wv[2] = {{x, 3}, {y, 4}};
    r = pwritev(b, wv, 2, 10);
    char p[3], q[4];
    struct iovec rv[2] = {{p, 3}, {q, 4}};
    long r2 = preadv(b, rv, 2, 10);
    printf("pwritev %ld, preadv %ld: %.3s %.4s\n", r, r2, p, q);
    lseek(b, 0, SEEK_SET);
    r = syscall(SYS_preadv2, b, rv, 2, -1L, 0L, 0);
    printf("preadv2 at the position: %ld, position now %ld\n", r, (long)lseek(b, 0, SEEK_CUR));

    int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    int wd = inotify_add_watch(in, ".", IN_CREATE);
    close(open("new-file", O_CREAT | O_WRONLY, 0600));
    char ev[256];
    n = read(in, ev, sizeof ev);
    struct inotify_event *e = (struct inotify_event *)ev;
    printf("inotify: watch %s, event %s for %s\n", wd >= 1 ? "ok" : "bad",
           n > 0 && (e->mask & IN_CREATE) ? "IN_CREATE" : "none", n > 0 ? e->name : "-");
    printf("inotify_rm_watch: %s\n", err(inotify_rm_watch(in, wd)));

    int m = (int)syscall(SYS_memfd_create, "lbr", 1U /* MFD_CLOEXEC */);
    (void)!write(m, "memfd!", 6);
    memset(buf, 0, sizeof buf);
    pread(m, buf, 6, 0);
    printf("memfd_create: %s, reads back %s, cloexec %d\n", err(m), buf, fcntl(m, F_GETFD));

    struct tms t;
    clock_t now = times(&t);
    printf("times: %s\n", now != (clock_t)-1 ? "ok" : "failed");
    errno = 0;
    int prio = getpriority(PRIO_PROCESS, 0);
    printf("getpriority: %s\n", errno == 0 && prio >= -20 && prio <= 19 ? "ok" : "failed");
    printf("sched_getscheduler: %d, priority max FIFO %d, OTHER %d\n", sched_getscheduler(0),
           sched_get_priority_max(SCHED_FIFO), sched_get_priority_max(SCHED_OTHER));
    printf("personality: %d\n", personality(0xffffffff) & 0xff);
    int mode = -1;
    r = syscall(SYS_get_mempolicy, &mode, NULL, 0UL, NULL, 0UL);
    printf("get_mempolicy: %s, mode %d\n", err(r), mode);
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("msync: %s, mlock: %s, munlock: %s\n", err(msync(page, 4096, MS_SYNC)),
           err(mlock(page, 4096)), err(munlock(page, 4096)));
    printf("sync: ok\n");
    sync();

    const char *names[] = {"a", "b", "s", "made", "link", "fifo", "new-file"};
    for (unsigned i = 0; i < sizeof names / sizeof *names; i++) unlink(names[i]);
    if (chdir("..") != 0 || rmdir(dir) != 0) printf("cleanup failed\n");
    return 0;
}
