/* A forking workload: CHILDREN processes (default 2) each spin in child_work() for
 * ITERATIONS iterations; every child prints "child PID" first. The parent waits for all.
 *
 *   forking [CHILDREN [ITERATIONS]]
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline)) unsigned long child_work(unsigned long n)
{
    unsigned long s = 3;
    for (unsigned long i = 0; i < n; i++)
        s = (s << 7) ^ (s >> 3) ^ i;
    return s;
}

int main(int argc, char **argv)
{
    int children = argc > 1 ? atoi(argv[1]) : 2;
    unsigned long n = argc > 2 ? strtoul(argv[2], NULL, 0) : 100000000UL;
    for (int i = 0; i < children; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0)
            return 1;
        if (pid == 0) {
            printf("child %d\n", (int)getpid());
            fflush(stdout);
            _exit(child_work(n) == 42 ? 1 : 0);
        }
    }
    int status, failed = 0;
    while (wait(&status) > 0)
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    return failed;
}
