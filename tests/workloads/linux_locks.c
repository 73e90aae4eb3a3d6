/* File locks between processes and close_range, as a database or a build tool uses
 * them: fcntl record locks (F_SETLK, F_GETLK, a waiting F_SETLKW, one a signal
 * interrupts), flock (LOCK_NB, a waiting LOCK_EX), close_range with and without
 * CLOSE_RANGE_CLOEXEC, and fchown to the owner it has. Each case prints one line. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char path[64];
static volatile sig_atomic_t handled;

static void on_alarm(int s) { (void)s; handled++; }

static int lock(int fd, int cmd, short type, off_t start, off_t len) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    return fcntl(fd, cmd, &fl);
}

static const char *err(int r) {
    if (r != -1) return "ok";
    return errno == EAGAIN ? "EAGAIN" : errno == EACCES ? "EACCES" : errno == EINTR ? "EINTR"
         : errno == EWOULDBLOCK ? "EWOULDBLOCK" : errno == EBADF ? "EBADF" : strerror(errno);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The child: what it sees of the parent's lock; it tells the parent through `ready`. */
static void record_locks(void) {
    int fd = open(path, O_RDWR | O_CREAT, 0600);
    printf("parent F_SETLK write [0,100): %s\n", err(lock(fd, F_SETLK, F_WRLCK, 0, 100)));
    int ready[2], done[2];
    if (pipe(ready) || pipe(done)) exit(1);
    pid_t c = fork();
    if (c == 0) {
        int mine = open(path, O_RDWR);
        printf("child F_SETLK write [50,60): %s\n", err(lock(mine, F_SETLK, F_WRLCK, 50, 10)));
        printf("child F_SETLK read [100,200): %s\n", err(lock(mine, F_SETLK, F_RDLCK, 100, 100)));
        struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 5};
        int r = fcntl(mine, F_GETLK, &q);
        printf("child F_GETLK [10,15): %s, type %s, start %ld, len %ld\n", err(r),
               q.l_type == F_WRLCK ? "F_WRLCK" : q.l_type == F_UNLCK ? "F_UNLCK" : "other",
               (long)q.l_start, (long)q.l_len);
        struct flock free_q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 300, .l_len = 5};
        fcntl(mine, F_GETLK, &free_q);
        printf("child F_GETLK [300,305): type %s\n", free_q.l_type == F_UNLCK ? "F_UNLCK" : "held");
        /* A waiting lock that a signal without SA_RESTART ends. */
        struct sigaction sa = {.sa_handler = on_alarm};
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = {{0, 0}, {0, 100000}};
        setitimer(ITIMER_REAL, &it, NULL);
        r = lock(mine, F_SETLKW, F_WRLCK, 0, 1);
        printf("child F_SETLKW interrupted: %s, handled %d\n", err(r), (int)handled);
        /* A waiting lock the parent's unlock ends. */
        (void)!write(ready[1], "r", 1);
        double t0 = now();
        r = lock(mine, F_SETLKW, F_WRLCK, 0, 100);
        printf("child F_SETLKW after the parent's unlock: %s, waited %s\n", err(r),
               now() - t0 > 0.1 ? "yes" : "no");
        _exit(0);
    }
    char b;
    (void)!read(ready[0], &b, 1);
    usleep(500000); /* long enough for a child slowed by a loaded machine to be waiting */
    /* (Said before it is done: the child's line may come at once after.) */
    printf("parent unlocks\n");
    if (lock(fd, F_SETLK, F_UNLCK, 0, 100) != 0) printf("parent unlock: %s\n", err(-1));
    int st;
    waitpid(c, &st, 0);
    printf("child exit %d\n", WEXITSTATUS(st));
    close(fd);
}

static void flocks(void) {
    int fd = open(path, O_RDWR);
    printf("parent flock LOCK_EX: %s\n", err(flock(fd, LOCK_EX)));
    int ready[2];
    if (pipe(ready)) exit(1);
    pid_t c = fork();
    if (c == 0) {
        int mine = open(path, O_RDWR);
        printf("child flock LOCK_SH|LOCK_NB: %s\n", err(flock(mine, LOCK_SH | LOCK_NB)));
        (void)!write(ready[1], "r", 1);
        double t0 = now();
        int r = flock(mine, LOCK_SH);
        printf("child flock LOCK_SH after the parent's unlock: %s, waited %s\n", err(r),
               now() - t0 > 0.1 ? "yes" : "no");
        _exit(0);
    }
    char b;
    (void)!read(ready[0], &b, 1);
    usleep(500000); /* long enough for a child slowed by a loaded machine to be waiting */
    printf("parent flock LOCK_UN\n");
    if (flock(fd, LOCK_UN) != 0) printf("parent flock LOCK_UN: %s\n", err(-1));
    int st;
    waitpid(c, &st, 0);
    close(fd);
}

static void close_ranges(void) {
    int base = open("/dev/null", O_RDONLY);
    for (int i = 0; i < 4; i++) dup2(base, base + 1 + i);
    long r = syscall(SYS_close_range, base + 3, base + 4, 4 /* CLOSE_RANGE_CLOEXEC */);
    printf("close_range CLOEXEC: %s, flags %d %d %d\n", err((int)r), fcntl(base + 2, F_GETFD),
           fcntl(base + 3, F_GETFD), fcntl(base + 4, F_GETFD));
    r = syscall(SYS_close_range, base + 1, ~0U, 0);
    int gone = fcntl(base + 1, F_GETFD);
    printf("close_range: %s, fd above closed: %s, below open: %s\n", err((int)r), err(gone),
           fcntl(base, F_GETFD) == 0 ? "yes" : "no");
    r = syscall(SYS_close_range, 5, 4, 0);
    printf("close_range backwards: %s\n", errno == EINVAL && r == -1 ? "EINVAL" : "wrong");
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    snprintf(path, sizeof path, "locks-%d", (int)getpid());
    record_locks();
    flocks();
    close_ranges();
    int fd = open(path, O_RDWR);
    printf("fchown to its owner: %s\n", err(fchown(fd, getuid(), getgid())));
    printf("chown to its owner: %s\n", err(chown(path, getuid(), getgid())));
    close(fd);
    unlink(path);
    return 0;
}
