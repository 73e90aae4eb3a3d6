/* Signals under the VM's Linux personality, checked against the native run: handlers
 * for faults (SIGSEGV from a NULL write, SIGFPE from a division by zero) that recover
 * with siglongjmp, raise() with SA_SIGINFO, a blocked signal delivered when unblocked,
 * SIG_IGN, a handler on a sigaltstack, tgkill to another thread, registers and SSE
 * state kept across a handler. With "abort": SIGABRT's handler returns and abort()
 * ends the program (exit 134).
 *
 *   linux_signals [abort]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static sigjmp_buf env;
static volatile sig_atomic_t got;
static volatile int info_code, info_signo;
static volatile int on_alt;
static char altstack[65536];

static void recover(int sig)
{
    got = sig;
    siglongjmp(env, sig);
}

static void with_info(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    info_signo = si->si_signo;
    info_code = si->si_code;
    got = sig;
    /* Uses SSE and the stack heavily. */
    char buf[64];
    snprintf(buf, sizeof buf, "%.3f", 3.14159 * sig);
    if (strlen(buf) == 0)
        abort();
}

static void alt_handler(int sig)
{
    char here;
    on_alt = (uintptr_t)&here >= (uintptr_t)altstack &&
             (uintptr_t)&here < (uintptr_t)altstack + sizeof altstack;
    got = sig;
}

static volatile pid_t thread_tid;
static volatile sig_atomic_t thread_got;
static void thread_handler(int sig)
{
    thread_got = (syscall(SYS_gettid) == thread_tid) ? sig : -1;
}

static void *waiter(void *arg)
{
    (void)arg;
    thread_tid = syscall(SYS_gettid);
    while (!thread_got)
        sched_yield();
    return NULL;
}

static void on_abort(int sig)
{
    printf("SIGABRT handler ran (%d)\n", sig);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = recover;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGFPE, &sa, NULL);
    for (int round = 0; round < 3; round++) {
        if (sigsetjmp(env, 1) == 0) {
            volatile int *p = NULL;
            *p = round;
        }
        printf("round %d: recovered from signal %d\n", round, (int)got);
    }
    if (sigsetjmp(env, 1) == 0) {
        volatile int zero = 0;
        printf("%d\n", 10 / zero);
    }
    printf("division by zero: signal %d\n", (int)got);

    sa.sa_handler = NULL;
    sa.sa_sigaction = with_info;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, NULL);
    volatile double x = 1.5;
    double before = x * 2.25;
    long r12_like = 0x1234567;
    got = 0;
    raise(SIGUSR1);
    double after = x * 2.25;
    printf("SIGUSR1: got %d, si_signo %d, si_code %d, fp kept %d, value %lx\n", (int)got,
           info_signo, info_code, before == after, r12_like);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    got = 0;
    raise(SIGUSR1);
    printf("blocked: got %d\n", (int)got);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    printf("unblocked: got %d\n", (int)got);

    signal(SIGUSR2, SIG_IGN);
    raise(SIGUSR2);
    printf("ignored SIGUSR2: still here\n");

    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = alt_handler;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR2, &sa, NULL);
    got = 0;
    raise(SIGUSR2);
    printf("SIGUSR2 on the alternate stack: got %d, on it %d\n", (int)got, (int)on_alt);

    signal(SIGHUP, thread_handler);
    pthread_t t;
    pthread_create(&t, NULL, waiter, NULL);
    while (!thread_tid)
        sched_yield();
    syscall(SYS_tgkill, getpid(), thread_tid, SIGHUP);
    pthread_join(t, NULL);
    printf("tgkill to a thread: its handler got %d\n", (int)thread_got);

    if (argc > 1 && strcmp(argv[1], "abort") == 0) {
        signal(SIGABRT, on_abort);
        abort();
    }
    return 0;
}
