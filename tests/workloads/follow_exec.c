/* Forks and execs a child program while it works itself: the child runs PROG ARGS...,
 * the parent spins in parent_work() for ITERATIONS iterations, then waits for the child.
 * Prints "pid N" (itself) and "child N" first.
 *
 *   follow_exec ITERATIONS PROG [ARGS...]
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline)) unsigned long parent_work(unsigned long n)
{
    unsigned long s = 11;
    for (unsigned long i = 0; i < n; i++)
        s = (s >> 3) ^ (s << 9) ^ i;
    return s;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    unsigned long n = strtoul(argv[1], NULL, 0);
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child == 0) {
        execv(argv[2], argv + 2);
        _exit(127);
    }
    printf("child %d\n", (int)child);
    fflush(stdout);
    unsigned long r = parent_work(n);
    int status;
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return 1;
    return r == 42;
}
