/* Signals in exact mode (tests/exact.rs, issue 14).
 *
 *   exact_signals timers      a compute loop under a 1 ms interval timer (SIGALRM), then
 *                             20 one-shot 2 ms timers, each awaited in a busy loop that
 *                             makes no system call: prints the loop's result and what
 *                             was taken (the timers' count is left out: it is timing)
 *   exact_signals raise N     100 SIGUSR1s raised at fixed points of a compute loop, the
 *                             handler running N rounds of its own loop: the same
 *                             instructions every run, N of them per signal in the handler
 *
 * Prints the same as natively; a signal delivered inside an instruction, or an
 * instruction whose bytes the tracer's breakpoints changed, would change the result. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static volatile sig_atomic_t ticks, fired;
static volatile unsigned long seen;

static void on_alarm(int sig) {
    (void)sig;
    ticks++;
    fired = 1;
}

static unsigned long rounds = 100;

static void on_usr1(int sig) {
    (void)sig;
    for (unsigned long i = 0; i < rounds; i++)
        seen += i;
}

/* A loop whose result depends on every multiplication and branch it makes. */
static unsigned long mix(unsigned long n, int raise_every) {
    unsigned long x = 1, s = 0;
    for (unsigned long i = 0; i < n; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        if (x >> 63)
            s += x >> 40;
        else
            s ^= x;
        if (raise_every && i % raise_every == 0)
            raise(SIGUSR1);
    }
    return s;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "timers") == 0) {
        signal(SIGALRM, on_alarm);
        struct itimerval every = {{0, 1000}, {0, 1000}};
        setitimer(ITIMER_REAL, &every, 0);
        unsigned long s = mix(4000000UL, 0);
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, 0);
        printf("sum %lu, interval timer %s\n", s, ticks > 0 ? "taken" : "never taken");
        for (int round = 0; round < 20; round++) {
            fired = 0;
            struct itimerval once = {{0, 0}, {0, 2000}};
            setitimer(ITIMER_REAL, &once, 0);
            unsigned long spins = 0;
            while (!fired)
                spins++;
        }
        printf("20 one-shot timers taken in a busy loop\n");
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "raise") == 0) {
        rounds = strtoul(argv[2], 0, 10);
        signal(SIGUSR1, on_usr1);
        unsigned long s = mix(1000000UL, 10000);
        printf("sum %lu, handler sum %lu\n", s, (unsigned long)seen);
        return 0;
    }
    fprintf(stderr, "usage: exact_signals timers | raise N\n");
    return 2;
}
