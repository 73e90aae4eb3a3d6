/* What a timer's signal tells its handler (siginfo), compared with a native run:
 * SIGALRM from setitimer comes from the kernel (SI_KERNEL); a POSIX timer's signal
 * carries SI_TIMER, the timer's id, its overrun count and its sigev_value (the id
 * itself without a sigevent); an expiry while the signal is blocked counts as an
 * overrun, which timer_getoverrun reports too. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static siginfo_t last;

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    last = *si;
    got = sig;
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
    return 0;
}
