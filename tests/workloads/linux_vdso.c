// Reads the clocks through the vDSO the way programs do (glibc's clock_gettime,
// gettimeofday and time), N times, while a 1 ms interval timer interrupts it (so
// signals arrive while the program is inside the vDSO), and prints what it saw:
// "name value" lines for tests/linux_vdso.rs.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/time.h>
#include <time.h>

static volatile long alarms;

static void on_alarm(int sig) {
    (void)sig;
    alarms++;
}

static long long ns(const struct timespec *t) {
    return t->tv_sec * 1000000000LL + t->tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    printf("sysinfo_ehdr %d\n", getauxval(AT_SYSINFO_EHDR) != 0);
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    int in_maps = 0;
    while (maps && fgets(line, sizeof line, maps))
        if (strstr(line, "[vdso]") && strstr(line, "r-xp"))
            in_maps = 1;
    printf("maps_vdso %d\n", in_maps);
    signal(SIGALRM, on_alarm);
    struct itimerval it = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_REAL, &it, 0);
    struct timespec first, prev, t;
    clock_gettime(CLOCK_MONOTONIC, &first);
    prev = first;
    long backwards = 0;
    for (long i = 0; i < n; i++) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (ns(&t) < ns(&prev))
            backwards++;
        prev = t;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, 0);
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    struct timeval tv;
    gettimeofday(&tv, 0);
    printf("calls %ld\n", n);
    printf("backwards %ld\n", backwards);
    printf("elapsed_ns %lld\n", ns(&prev) - ns(&first));
    printf("realtime_ns %lld\n", ns(&rt));
    printf("gettimeofday_us %lld\n", tv.tv_sec * 1000000LL + tv.tv_usec);
    printf("time %lld\n", (long long)time(0));
    printf("alarms %ld\n", alarms);
    return 0;
}
