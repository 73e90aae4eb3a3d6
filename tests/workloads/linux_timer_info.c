/* What a timer's signal tells its handler (siginfo), compared with a native run:
 * SIGALRM from setitimer comes from the kernel (SI_KERNEL); a POSIX timer's signal
 * carries SI_TIMER, the timer's id, its overrun count and its sigev_value (the id
 * itself without a sigevent); an expiry while the signal is blocked counts as an
 * overrun, which timer_getoverrun reports too, however many system calls the program
 * makes meanwhile; a timer signal discarded while ignored leaves nothing behind for
 * the next signal; realtime signals from two timers are two deliveries, each with its
 * timer's id, while one timer's repeated expiries are one delivery with overruns. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static siginfo_t last;
static siginfo_t seen[8];
static volatile sig_atomic_t nseen;

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    last = *si;
    got = sig;
    if (nseen < 8)
        seen[nseen++] = *si;
}

static long ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

static void handle(int sig)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO;
    sigaction(sig, &sa, NULL);
}

/* Wait with `sig` blocked until its handler has run. */
static void wait_for(int sig)
{
    sigset_t none;
    sigemptyset(&none);
    while (got != sig)
        sigsuspend(&none);
    got = 0;
}

static void block(int sig, int how)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    sigprocmask(how, &s, NULL);
}

static const char *code_name(int code)
{
    switch (code) {
    case SI_USER: return "SI_USER";
    case SI_KERNEL: return "SI_KERNEL";
    case SI_TIMER: return "SI_TIMER";
    case SI_TKILL: return "SI_TKILL";
    case SI_QUEUE: return "SI_QUEUE";
    default: return "other";
    }
}

static timer_t arm(struct sigevent *sev, long first_ns, long every_ns)
{
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, sev, &t) != 0) {
        perror("timer_create");
        return 0;
    }
    struct itimerspec its = {{0, every_ns}, {0, first_ns}};
    timer_settime(t, 0, &its, NULL);
    return t;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);

    /* setitimer(ITIMER_REAL): SIGALRM from the kernel. */
    handle(SIGALRM);
    block(SIGALRM, SIG_BLOCK);
    struct itimerval it = {{0, 0}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    wait_for(SIGALRM);
    printf("setitimer: signo %d code %s pid %d uid %d\n", last.si_signo,
           code_name(last.si_code), (int)last.si_pid, (int)last.si_uid);

    /* A POSIX timer with SIGEV_SIGNAL and a value. */
    handle(SIGUSR1);
    block(SIGUSR1, SIG_BLOCK);
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGUSR1;
    sev.sigev_value.sival_int = 42;
    timer_t t1 = arm(&sev, 20000000, 0);
    wait_for(SIGUSR1);
    printf("timer: signo %d code %s id matches %s overrun %d value %d\n", last.si_signo,
           code_name(last.si_code), last.si_timerid == (int)(long)t1 ? "yes" : "no",
           last.si_overrun, last.si_value.sival_int);
    timer_delete(t1);

    /* No sigevent: SIGALRM with the timer's id as the value. */
    timer_t t2 = arm(NULL, 20000000, 0);
    wait_for(SIGALRM);
    printf("timer without sigevent: signo %d code %s value is the id %s\n", last.si_signo,
           code_name(last.si_code), last.si_value.sival_int == (int)(long)t2 ? "yes" : "no");
    timer_delete(t2);

    /* Expiries while the signal is blocked are overruns. */
    handle(SIGUSR2);
    block(SIGUSR2, SIG_BLOCK);
    sev.sigev_signo = SIGUSR2;
    sev.sigev_value.sival_int = 7;
    timer_t t3 = arm(&sev, 1000000, 1000000);
    struct timespec nap = {0, 100000000};
    nanosleep(&nap, NULL);
    /* Still running (disarming it would drop the pending signal, as Linux does). */
    wait_for(SIGUSR2);
    int over = timer_getoverrun(t3);
    printf("blocked timer: code %s value %d overrun > 0 %s, timer_getoverrun agrees %s\n",
           code_name(last.si_code), last.si_value.sival_int, last.si_overrun > 0 ? "yes" : "no",
           over == last.si_overrun ? "yes" : "no");
    timer_delete(t3);

    /* Blocked while the program makes system calls: every expiry still counts. */
    sev.sigev_signo = SIGUSR2;
    sev.sigev_value.sival_int = 8;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    timer_t t4 = arm(&sev, 1000000, 1000000);
    struct timespec short_nap = {0, 2000000};
    while (ms_since(&t0) < 100) {
        getppid();
        nanosleep(&short_nap, NULL);
    }
    long waited = ms_since(&t0);
    wait_for(SIGUSR2);
    printf("blocked timer across system calls: value %d, overruns count the expiries %s\n",
           last.si_value.sival_int, last.si_overrun + 1 >= waited / 2 ? "yes" : "no");
    timer_delete(t4);

    /* Discarded while ignored: the next SIGUSR2 (from raise) says who sent it. */
    sev.sigev_value.sival_int = 9;
    timer_t t5 = arm(&sev, 1000000, 0);
    /* Until it has expired (its signal is pending then, blocked). */
    struct itimerspec left;
    do {
        nanosleep(&short_nap, NULL);
        timer_gettime(t5, &left);
    } while (left.it_value.tv_sec != 0 || left.it_value.tv_nsec != 0);
    signal(SIGUSR2, SIG_IGN);
    block(SIGUSR2, SIG_UNBLOCK);
    getppid();
    handle(SIGUSR2);
    nseen = 0;
    raise(SIGUSR2);
    printf("raise after an ignored timer signal: %d delivery, code %s\n", (int)nseen,
           code_name(last.si_code));
    timer_delete(t5);

    /* Realtime: two timers on one signal queue two instances; one timer's repeated
     * expiries stay one instance with overruns. */
    int rt = SIGRTMIN + 2;
    handle(rt);
    block(rt, SIG_BLOCK);
    sev.sigev_signo = rt;
    sev.sigev_value.sival_int = 1;
    timer_t t6 = arm(&sev, 1000000, 0);
    sev.sigev_value.sival_int = 2;
    timer_t t7 = arm(&sev, 3000000, 0);
    sev.sigev_value.sival_int = 3;
    timer_t t8 = arm(&sev, 5000000, 2000000);
    struct timespec nap50 = {0, 50000000};
    nanosleep(&nap50, NULL);
    nseen = 0;
    block(rt, SIG_UNBLOCK);
    getppid();
    getppid();
    getppid();
    block(rt, SIG_BLOCK);
    /* The three instances queued while blocked come first, in the order their timers
     * expired (t8 goes on expiring: only its first instance counts). */
    int values = 0, overruns_ok = nseen >= 3;
    for (int i = 0; i < 3 && i < nseen; i++) {
        int v = seen[i].si_value.sival_int;
        values |= 1 << v;
        overruns_ok &= v == 3 ? seen[i].si_overrun > 0 : seen[i].si_overrun == 0;
    }
    printf("realtime timers: values 1, 2, 3 once each %s, overruns 0 0 and > 0 %s\n",
           values == 0xe ? "yes" : "no", overruns_ok ? "yes" : "no");
    timer_delete(t8);
    timer_delete(t6);
    timer_delete(t7);
    return 0;
}
