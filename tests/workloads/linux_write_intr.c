/* Signals interrupt a write blocked on a full pipe (signal(7)): nothing written is
 * EINTR, or a restart after the handler with SA_RESTART; something written is a short
 * count; an ignored signal interrupts nothing. Each case prints one line. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled;
static int fds[2];
static int drain_on_signal;
static char big[100000];

static void on_sig(int s)
{
    (void)s;
    handled++;
    if (drain_on_signal) {
        char b[8192];
        (void)!read(fds[0], b, sizeof b);
    }
}

static void handle(int sig, int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sig;
    sa.sa_flags = flags;
    sigaction(sig, &sa, NULL);
}

static void arm(int ms)
{
    struct itimerval it = {{0, 0}, {ms / 1000, (ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static const char *err(long r)
{
    if (r != -1)
        return "ok";
    return errno == EINTR ? "EINTR" : strerror(errno);
}

/* A fresh pipe of the default size, filled to the brim. */
static void full_pipe(void)
{
    if (fds[0]) {
        close(fds[0]);
        close(fds[1]);
    }
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(1);
    }
    fcntl(fds[1], F_SETFL, O_NONBLOCK);
    while (write(fds[1], big, 4096) > 0)
        ;
    fcntl(fds[1], F_SETFL, 0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);

    full_pipe();
    handle(SIGALRM, 0);
    handled = 0;
    arm(100);
    long r = write(fds[1], "x", 1);
    printf("write to a full pipe, no SA_RESTART: %ld %s, handled %d\n", r, err(r), handled);

    full_pipe();
    handle(SIGALRM, SA_RESTART);
    drain_on_signal = 1;
    handled = 0;
    arm(100);
    r = write(fds[1], "x", 1);
    drain_on_signal = 0;
    printf("write to a full pipe, SA_RESTART: %ld %s, handled %d\n", r, err(r), handled);

    /* 100000 bytes into an empty 64 KiB pipe: what fits is written, then the signal. */
    full_pipe();
    char b[65536];
    if (read(fds[0], b, sizeof b) != sizeof b)
        printf("the full pipe did not hold 64 KiB\n");
    handle(SIGALRM, 0);
    handled = 0;
    arm(100);
    r = write(fds[1], big, sizeof big);
    printf("large write interrupted: %ld %s, handled %d\n", r, err(r), handled);

    /* An ignored signal does not interrupt it: a child drains the pipe later. */
    full_pipe();
    signal(SIGUSR1, SIG_IGN);
    pid_t parent = getpid();
    pid_t child = fork();
    if (child == 0) {
        struct timespec t = {0, 50000000};
        nanosleep(&t, NULL);
        kill(parent, SIGUSR1);
        nanosleep(&t, NULL);
        long got = 0, n;
        close(fds[1]);
        while ((n = read(fds[0], b, sizeof b)) > 0)
            got += n;
        _exit(got == 65536 + (long)sizeof big ? 0 : 1);
    }
    r = write(fds[1], big, sizeof big);
    close(fds[1]);
    fds[0] = fds[1] = 0;
    int status;
    waitpid(child, &status, 0);
    printf("write with an ignored signal: %ld %s, reader saw it all %s\n", r, err(r),
           WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "yes" : "no");
    return 0;
}
