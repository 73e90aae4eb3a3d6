/* Threads under the VM's Linux personality: WORKERS threads (default 4) each compute
 * worker_sum() over its own slice in a thread-local accumulator, meet at a barrier, hand
 * results to the main thread through a mutex + condition variable queue, and are joined.
 * Also: a timed condition wait that must time out, a detached thread, nanosleep, and
 * pthread_exit from a worker. Output is deterministic (sorted by worker), so it can be
 * compared byte for byte with the native run.
 *
 *   linux_threads [WORKERS [ITERATIONS]]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static unsigned long iterations = 2000000UL;
static pthread_barrier_t barrier;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready = PTHREAD_COND_INITIALIZER;
static unsigned long results[64];
static int done_count;
static __thread unsigned long local_acc;

__attribute__((noinline)) unsigned long worker_sum(unsigned long seed, unsigned long n)
{
    unsigned long s = seed;
    for (unsigned long i = 0; i < n; i++)
        s = s * 6364136223846793005UL + 1442695040888963407UL + (s >> 29);
    return s;
}

static void *worker(void *arg)
{
    long id = (long)arg;
    local_acc = worker_sum((unsigned long)id + 1, iterations);
    pthread_barrier_wait(&barrier);
    pthread_mutex_lock(&lock);
    results[id] = local_acc;
    done_count++;
    pthread_cond_signal(&ready);
    pthread_mutex_unlock(&lock);
    if (id == 1)
        pthread_exit((void *)(id * 10));
    return (void *)(id * 10);
}

static void *detached(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
    return NULL;
}

int main(int argc, char **argv)
{
    int workers = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2)
        iterations = strtoul(argv[2], NULL, 10);
    if (workers < 1 || workers > 64)
        return 2;
    pthread_barrier_init(&barrier, NULL, workers);
    pthread_t t[64];
    for (long i = 0; i < workers; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)i) != 0) {
            perror("pthread_create");
            return 1;
        }
    pthread_mutex_lock(&lock);
    while (done_count < workers)
        pthread_cond_wait(&ready, &lock);
    /* Nobody signals again: this wait must time out. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 20000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    int r = pthread_cond_timedwait(&ready, &lock, &until);
    pthread_mutex_unlock(&lock);
    printf("timedwait: %s\n", r == ETIMEDOUT ? "timed out" : "woken");
    long sum_codes = 0;
    for (int i = 0; i < workers; i++) {
        void *ret;
        pthread_join(t[i], &ret);
        sum_codes += (long)ret;
    }
    pthread_t d;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_create(&d, &attr, detached, NULL);
    for (int i = 0; i < workers; i++)
        printf("worker %d: %016lx\n", i, results[i]);
    printf("joined %d workers, codes %ld, main local %lu\n", workers, sum_codes, local_acc);
    return 0;
}
