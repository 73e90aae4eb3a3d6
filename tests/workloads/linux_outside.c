/* What a program reads from outside that changes from run to run on the host: every
 * clock, its ids (pid, parent, thread, forked child, /proc/self), after a sleep. Prints
 * "name value" lines, then spins for a time that depends on all of them, so exact-mode
 * counts repeat only when the values do (tests/linux_outside.rs). Built with
 * gcc -O1 -pthread. The thread writes its id to a pipe and then waits for the end of
 * the program (no join), so that no thread waits for another for a time that depends
 * on the host's scheduling. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/time.h>
#include <sys/times.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned long mixed;

static void show(const char *name, long long v) {
    printf("%s %lld\n", name, v);
    mixed = mixed * 1000003 + (unsigned long long)v;
}

static void show_clock(const char *name, clockid_t id) {
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0) {
        printf("%s error\n", name);
        return;
    }
    printf("%s %lld.%09ld\n", name, (long long)ts.tv_sec, ts.tv_nsec);
    mixed = mixed * 1000003 + (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* The first field of /proc/self/stat and the target of /proc/self. */
static void show_proc(const char *who) {
    char name[64], buf[512];
    snprintf(name, sizeof name, "%s_proc_self", who);
    ssize_t n = readlink("/proc/self", buf, sizeof buf - 1);
    show(name, n > 0 ? (buf[n] = 0, atoll(buf)) : -1);
    snprintf(name, sizeof name, "%s_proc_stat", who);
    int fd = open("/proc/self/stat", O_RDONLY);
    n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    show(name, n > 0 ? (buf[n] = 0, atoll(buf)) : -1);
    if (fd >= 0) close(fd);
}

static struct timespec mark;

static void start_timing(void) { clock_gettime(CLOCK_MONOTONIC, &mark); }

static long long elapsed_us(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - mark.tv_sec) * 1000000LL + (now.tv_nsec - mark.tv_nsec) / 1000;
}

/* /proc/self/exe leads to this program (readlink, and open + fstat), and
 * /proc/thread-self says PID/task/TID. */
static void show_exe(const char *argv0) {
    char link[PATH_MAX], real[PATH_MAX], want[64];
    ssize_t n = readlink("/proc/self/exe", link, sizeof link - 1);
    int same = n > 0 && realpath(argv0, real) && (link[n] = 0, strcmp(link, real) == 0);
    show("exe_link_is_the_program", same);
    struct stat a, b;
    int fd = open("/proc/self/exe", O_RDONLY);
    same = fd >= 0 && fstat(fd, &a) == 0 && stat(argv0, &b) == 0 && a.st_ino == b.st_ino;
    show("exe_opens_the_program", same);
    if (fd >= 0) close(fd);
    n = readlink("/proc/thread-self", link, sizeof link - 1);
    snprintf(want, sizeof want, "%d/task/%ld", getpid(), (long)syscall(SYS_gettid));
    show("thread_self", n > 0 && (link[n] = 0, strcmp(link, want) == 0));
}

static int tid_pipe[2];

static void *thread_main(void *arg) {
    (void)arg;
    long tid = syscall(SYS_gettid);
    if (write(tid_pipe[1], &tid, sizeof tid) != sizeof tid) abort();
    for (;;) pause();
}

int main(int argc, char **argv) {
    (void)argc;
    setvbuf(stdout, NULL, _IONBF, 0);
    show_clock("realtime", CLOCK_REALTIME);
    show_clock("monotonic", CLOCK_MONOTONIC);
    show_clock("boottime", CLOCK_BOOTTIME);
    show_clock("monotonic_raw", CLOCK_MONOTONIC_RAW);
    show_clock("realtime_coarse", CLOCK_REALTIME_COARSE);
    show_clock("monotonic_coarse", CLOCK_MONOTONIC_COARSE);
    show_clock("process_cputime", CLOCK_PROCESS_CPUTIME_ID);
    show_clock("thread_cputime", CLOCK_THREAD_CPUTIME_ID);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    show("gettimeofday_us", (long long)tv.tv_sec * 1000000 + tv.tv_usec);
    show("time", (long long)time(NULL));
    struct tms tms;
    show("times", (long long)times(&tms));
    struct sysinfo si;
    sysinfo(&si);
    show("uptime", si.uptime);

    show("pid", getpid());
    show("ppid", getppid());
    show("tid", syscall(SYS_gettid));
    show("pgid", getpgid(0));
    show("sid", getsid(0));
    show_proc("main");
    show_exe(argv[0]);

    /* A sleep, a poll that times out, a futex wait with an absolute CLOCK_REALTIME
     * deadline (sem_timedwait) that times out. */
    start_timing();
    struct timespec nap = {0, 200 * 1000 * 1000};
    nanosleep(&nap, NULL);
    show("slept_us", elapsed_us());
    start_timing();
    show("poll", poll(NULL, 0, 50));
    show("polled_us", elapsed_us());
    sem_t sem;
    sem_init(&sem, 0, 0);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_nsec += 30 * 1000 * 1000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    start_timing();
    int r = sem_timedwait(&sem, &deadline);
    show("semwait_timedout", r == -1 && errno == ETIMEDOUT);
    show("semwait_us", elapsed_us());
    /* rt_sigtimedwait for a signal that never comes, with a relative timeout. */
    sigset_t unsent;
    sigemptyset(&unsent);
    sigaddset(&unsent, SIGUSR2);
    sigprocmask(SIG_BLOCK, &unsent, NULL);
    struct timespec sigwait_for = {0, 20 * 1000 * 1000};
    start_timing();
    r = sigtimedwait(&unsent, NULL, &sigwait_for);
    show("sigwait_timedout", r == -1 && errno == EAGAIN);
    show("sigwait_us", elapsed_us());

    pid_t child = fork();
    if (child == 0) {
        show("child_pid", getpid());
        show("child_ppid", getppid());
        show_proc("child");
        _exit(7);
    }
    /* The child's lines first, then ours: the two processes never print at once. */
    int status = 0;
    pid_t waited = wait4(child, &status, 0, NULL);
    show("fork", child);
    show("wait4", waited);
    show("child_status", WEXITSTATUS(status));

    if (pipe(tid_pipe) != 0) return 2;
    pthread_t t;
    if (pthread_create(&t, NULL, thread_main, NULL) != 0) return 3;
    long tid = 0;
    if (read(tid_pipe[0], &tid, sizeof tid) != sizeof tid) return 4;
    show("thread_tid", tid);

    show_clock("realtime_end", CLOCK_REALTIME);
    unsigned long x = 0;
    for (unsigned long i = 0; i < 20000 + mixed % 50000; i++) x = x * 31 + (i ^ (x >> 7));
    printf("spin %lu\n", x);
    fflush(stdout);
    _exit(0);
}
