/* What a signal from another process tells its handler (siginfo), compared with a
 * native run: SIGCHLD from a child that exits carries CLD_EXITED, the child's pid and
 * uid and its exit status; from a child killed by a signal, CLD_KILLED and the signal;
 * a kill() from a child carries SI_USER with the child's pid and uid. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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

static const char *code_name(int code)
{
    switch (code) {
    case SI_USER: return "SI_USER";
    case CLD_EXITED: return "CLD_EXITED";
    case CLD_KILLED: return "CLD_KILLED";
    case CLD_DUMPED: return "CLD_DUMPED";
    default: return "other";
    }
}

/* Wait (with `sig` blocked outside the wait) until its handler has run. */
static void wait_for(int sig)
{
    sigset_t none;
    sigemptyset(&none);
    while (got != sig)
        sigsuspend(&none);
    got = 0;
}

static void report(const char *what, pid_t child)
{
    printf("%s: signo %d code %s pid is the child %s uid matches %s", what, last.si_signo,
           code_name(last.si_code), last.si_pid == child ? "yes" : "no",
           last.si_uid == getuid() ? "yes" : "no");
    if (last.si_signo == SIGCHLD)
        printf(" status %d", last.si_status);
    printf("\n");
}

int main(void)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGCHLD);
    sigaddset(&s, SIGUSR1);
    sigprocmask(SIG_BLOCK, &s, NULL);
    handle(SIGCHLD);
    handle(SIGUSR1);

    pid_t c = fork();
    if (c == 0)
        _exit(7);
    wait_for(SIGCHLD);
    report("child exits 7", c);
    waitpid(c, NULL, 0);

    c = fork();
    if (c == 0) {
        for (;;)
            pause();
    }
    kill(c, SIGTERM);
    wait_for(SIGCHLD);
    report("child killed by SIGTERM", c);
    waitpid(c, NULL, 0);

    /* The child waits for the parent's word before it exits, so that its SIGUSR1 and
     * its SIGCHLD come one at a time. */
    int go[2];
    if (pipe(go) != 0)
        return 1;
    pid_t parent = getpid();
    c = fork();
    if (c == 0) {
        char b;
        close(go[1]);
        kill(parent, SIGUSR1);
        _exit(read(go[0], &b, 1) == 1 ? 0 : 1);
    }
    close(go[0]);
    wait_for(SIGUSR1);
    report("kill from a child", c);
    if (write(go[1], "x", 1) != 1)
        return 1;
    wait_for(SIGCHLD);
    report("then it exits 0", c);
    waitpid(c, NULL, 0);
    return 0;
}
