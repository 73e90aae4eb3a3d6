/* Calls into the legacy vsyscall page at 0xffffffffff600000 (as the JVM and old
 * static binaries do) and checks the answers against the ordinary system calls.
 * Prints the same lines natively and under `lbrprof run --vm`. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef long (*gettimeofday_fn)(struct timeval *, struct timezone *);
typedef time_t (*time_fn)(time_t *);
typedef long (*getcpu_fn)(unsigned *, unsigned *, void *);

int main(void) {
    gettimeofday_fn vgtod = (gettimeofday_fn)0xffffffffff600000UL;
    time_fn vtime = (time_fn)0xffffffffff600400UL;
    getcpu_fn vgetcpu = (getcpu_fn)0xffffffffff600800UL;

    time_t before = time(NULL);
    time_t stored = 0;
    time_t t = vtime(&stored);
    time_t after = time(NULL);
    printf("time: %s\n", t >= before && t <= after && stored == t ? "ok" : "WRONG");

    struct timeval tv = {0, 0};
    long r = vgtod(&tv, NULL);
    time_t now = time(NULL);
    printf("gettimeofday: %s\n",
           r == 0 && tv.tv_sec <= now && tv.tv_sec >= before && tv.tv_usec >= 0 && tv.tv_usec < 1000000
               ? "ok" : "WRONG");

    unsigned cpu = ~0u, node = ~0u;
    r = vgetcpu(&cpu, &node, NULL);
    long ncpu = sysconf(_SC_NPROCESSORS_CONF);
    printf("getcpu: %s\n", r == 0 && cpu < (unsigned)ncpu && node != ~0u ? "ok" : "WRONG");
    printf("sched_getcpu: %s\n", sched_getcpu() >= 0 ? "ok" : "WRONG");

    /* Many calls: a page that works once works every time. */
    long sum = 0;
    for (int i = 0; i < 1000; i++) sum += vtime(NULL) >= before;
    printf("1000 calls: %ld\n", sum);
    return 0;
}
