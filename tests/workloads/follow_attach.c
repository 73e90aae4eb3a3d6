/* A process to attach to that then execs: prints "pid N" and "ready", spins in
 * before_exec() for WAIT_MS milliseconds of wall time, then execs PROG ARGS... (same pid).
 *
 *   follow_attach WAIT_MS PROG [ARGS...]
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) unsigned long before_exec(double seconds)
{
    unsigned long s = 1;
    double end = now() + seconds;
    while (now() < end)
        for (int i = 0; i < 100000; i++)
            s = (s << 1) ^ (s >> 7) ^ i;
    return s;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    printf("pid %d\nready\n", (int)getpid());
    fflush(stdout);
    if (before_exec(atoi(argv[1]) / 1000.0) == 42)
        return 3;
    execv(argv[2], argv + 2);
    return 127;
}
