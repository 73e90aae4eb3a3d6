/* Forks without exec, and starts a thread in the child: the parent spins in
 * parent_work(), the child in child_work() while its second thread spins in
 * thread_work(), each for ITERATIONS iterations. Prints "pid N", "child N" and "tid N"
 * (the child's thread) first.
 *
 *   follow_fork [ITERATIONS]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned long iterations = 100000000UL;

__attribute__((noinline)) unsigned long parent_work(unsigned long n)
{
    unsigned long s = 11;
    for (unsigned long i = 0; i < n; i++)
        s = (s >> 3) ^ (s << 9) ^ i;
    return s;
}

__attribute__((noinline)) unsigned long child_work(unsigned long n)
{
    unsigned long s = 3;
    for (unsigned long i = 0; i < n; i++)
        s = (s << 7) ^ (s >> 3) ^ i;
    return s;
}

__attribute__((noinline)) unsigned long thread_work(unsigned long n)
{
    unsigned long s = 5;
    for (unsigned long i = 0; i < n; i++)
        s = (s << 3) ^ (s >> 5) ^ (i + 1);
    return s;
}

static void *thread_main(void *arg)
{
    (void)arg;
    printf("tid %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    return (void *)thread_work(iterations);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        iterations = strtoul(argv[1], NULL, 0);
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child == 0) {
        printf("child %d\n", (int)getpid());
        fflush(stdout);
        pthread_t t;
        if (pthread_create(&t, NULL, thread_main, NULL) != 0)
            _exit(1);
        unsigned long r = child_work(iterations);
        void *tr;
        pthread_join(t, &tr);
        _exit((r ^ (unsigned long)tr) == 42);
    }
    unsigned long r = parent_work(iterations);
    int status;
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return 1;
    return r == 42;
}
