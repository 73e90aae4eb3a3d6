/* execve while the other threads are in the middle of system calls, then new threads:
 * a thread the exec ends may have just had a call's result written for it when it is
 * told to end, and the next program's threads then start on the same vCPUs. Each new
 * thread checks that it starts where and with what pthread_create said (its argument,
 * its own stack), and the main thread that its own stack is untouched.
 *   linux_exec_busy [ROUND]   ROUND 0..2 each start 5 threads calling getppid in a
 *                             loop and exec round+1 from one of them; round 3 ends. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { THREADS = 5, ROUNDS = 3 };

static char self_path[4096];
static int round_no;
static volatile int calls_started;

static void *busy(void *a) {
    (void)a;
    __atomic_add_fetch(&calls_started, 1, __ATOMIC_RELAXED);
    for (;;) syscall(SYS_getppid);
    return NULL;
}

static void *do_exec(void *a) {
    (void)a;
    while (__atomic_load_n(&calls_started, __ATOMIC_RELAXED) < THREADS) {}
    /* Let every busy thread make a few thousand calls first. */
    for (int i = 0; i < 1000; i++) syscall(SYS_getppid);
    char next[16];
    snprintf(next, sizeof next, "%d", round_no + 1);
    char *argv[] = {self_path, next, NULL};
    fflush(stdout);
    execv(self_path, argv);
    perror("execv");
    exit(1);
}

/* A new thread: its argument and a deep, canary-protected stack of its own. */
static unsigned long sum_down(volatile char *buf, int depth) {
    char local[256];
    memset(local, depth, sizeof local);
    unsigned long s = depth ? sum_down(local, depth - 1) : 0;
    for (size_t i = 0; i < sizeof local; i++) s += (unsigned char)local[i];
    return s + (unsigned char)buf[0];
}

static void *check(void *a) {
    unsigned long n = (unsigned long)a;
    char base[1] = {0};
    return (void *)(sum_down(base, 20) * 100 + n);
}

int main(int argc, char **argv) {
    strncpy(self_path, argv[0], sizeof self_path - 1);
    round_no = argc > 1 ? atoi(argv[1]) : 0;
    char guard[64];
    memset(guard, 0x5a, sizeof guard);
    /* The threads of this program (on the vCPUs the last one's threads left). */
    pthread_t t[THREADS];
    for (unsigned long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, check, (void *)i);
    int wrong = 0;
    for (unsigned long i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        if ((unsigned long)r != sum_down((char[1]){0}, 20) * 100 + i) wrong++;
    }
    for (size_t i = 0; i < sizeof guard; i++) wrong += guard[i] != 0x5a;
    printf("round %d: %d threads, %d wrong\n", round_no, THREADS, wrong);
    if (round_no >= ROUNDS) return wrong ? 1 : 0;
    for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, busy, NULL);
    pthread_t e;
    pthread_create(&e, NULL, do_exec, NULL);
    pthread_join(e, NULL); /* the exec ends this wait */
    puts("join returned: WRONG");
    return 1;
}
