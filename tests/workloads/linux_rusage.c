/* CPU time and memory accounting: getrusage (self, children, thread), wait4's
 * rusage, times(), and the CPU clocks of the process, a thread, and a child
 * (clock_getcpuclockid). Each check prints "ok" or what it saw, so that the output
 * does not depend on how fast the machine is. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/times.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double secs(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

static double clock_secs(clockid_t id) {
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0) return -1;
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Burn `s` seconds of this thread's CPU time. */
static void spin(double s) {
    double start = clock_secs(CLOCK_THREAD_CPUTIME_ID);
    volatile unsigned long x = 0;
    while (clock_secs(CLOCK_THREAD_CPUTIME_ID) - start < s)
        for (int i = 0; i < 100000; i++) x += i;
}

static void *worker(void *arg) {
    (void)arg;
    spin(0.15);
    return NULL;
}

static void check(const char *what, int good, double seen) {
    if (good) printf("%s: ok\n", what);
    else printf("%s: WRONG (%.3f)\n", what, seen);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    /* 64 MiB touched: the resident set grows past it. */
    size_t big = 64 << 20;
    char *mem = malloc(big);
    memset(mem, 1, big);

    spin(0.2);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double own = secs(ru.ru_utime) + secs(ru.ru_stime);
    check("getrusage(SELF) counts the spin", own >= 0.19, own);
    check("max resident set counts the 64 MiB", ru.ru_maxrss >= 64 * 1024, ru.ru_maxrss);
    double process = clock_secs(CLOCK_PROCESS_CPUTIME_ID);
    check("CLOCK_PROCESS_CPUTIME_ID counts the spin", process >= 0.19 && process < own + 1, process);

    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    clockid_t tc;
    pthread_getcpuclockid(t, &tc);
    double before = clock_secs(tc);
    check("a thread's clock reads", before >= 0, before);
    pthread_join(t, NULL);
    getrusage(RUSAGE_SELF, &ru);
    double with_thread = secs(ru.ru_utime) + secs(ru.ru_stime);
    check("an ended thread's time stays the process's", with_thread >= own + 0.14, with_thread - own);
    getrusage(RUSAGE_THREAD, &ru);
    double thread = secs(ru.ru_utime) + secs(ru.ru_stime);
    check("RUSAGE_THREAD is the caller's alone", thread >= 0.19 && thread < with_thread - 0.1, thread);

    getrusage(RUSAGE_CHILDREN, &ru);
    check("no children yet", secs(ru.ru_utime) + secs(ru.ru_stime) < 0.05, secs(ru.ru_utime));
    pid_t c = fork();
    if (c == 0) {
        spin(0.25);
        _exit(0);
    }
    clockid_t cc;
    int have_clock = clock_getcpuclockid(c, &cc) == 0;
    usleep(100000);
    double child_now = have_clock ? clock_secs(cc) : -1;
    check("a running child's clock reads", have_clock && child_now >= 0, child_now);
    int status;
    wait4(c, &status, 0, &ru);
    double child = secs(ru.ru_utime) + secs(ru.ru_stime);
    check("wait4 tells the child's time", child >= 0.24, child);
    getrusage(RUSAGE_CHILDREN, &ru);
    double children = secs(ru.ru_utime) + secs(ru.ru_stime);
    check("RUSAGE_CHILDREN has the reaped child", children >= 0.24, children);

    struct tms tm;
    times(&tm);
    long hz = sysconf(_SC_CLK_TCK);
    double tms_own = (double)(tm.tms_utime + tm.tms_stime) / hz;
    double tms_children = (double)(tm.tms_cutime + tm.tms_cstime) / hz;
    check("times() has the process's time", tms_own >= 0.3, tms_own);
    check("times() has the children's time", tms_children >= 0.2, tms_children);
    check("getrusage(42) is EINVAL", getrusage(42, &ru) == -1, 0);
    free(mem);
    return 0;
}
