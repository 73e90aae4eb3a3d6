/* A multi-threaded workload: THREADS threads (default 3) each spin in thread_work() for
 * ITERATIONS iterations, and print their thread ids ("tid N") before they start. With
 * DELAY_MS the main thread first prints "ready", then sleeps that long before it creates
 * the threads (so a profiler can attach before they exist).
 *
 *   threads [THREADS [ITERATIONS [DELAY_MS]]]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static unsigned long iterations = 100000000UL;
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

__attribute__((noinline)) unsigned long thread_work(unsigned long n)
{
    unsigned long s = 7;
    for (unsigned long i = 0; i < n; i++)
        s = s * 2862933555777941757UL + 3037000493UL + (s >> 31);
    return s;
}

static void *run(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&print_lock);
    printf("tid %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    pthread_mutex_unlock(&print_lock);
    return (void *)thread_work(iterations);
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 3;
    if (argc > 2)
        iterations = strtoul(argv[2], NULL, 0);
    if (threads < 1 || threads > 64)
        return 2;
    if (argc > 3) {
        printf("ready\n");
        fflush(stdout);
        usleep((useconds_t)atoi(argv[3]) * 1000);
    }
    pthread_t t[64];
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, run, NULL) != 0)
            return 1;
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    return 0;
}
