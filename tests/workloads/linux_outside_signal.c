/* A program that waits for a signal from outside (a test sends it to lbrprof, or to
 * this program when run natively), for tests/linux_signals.rs.
 *
 *   linux_outside_signal handle WAIT   SIGINT handler (no SA_RESTART); prints "ready",
 *                                      waits, prints "got SIGINT" and exits 3
 *   linux_outside_signal default WAIT  SIGINT's default action: killed (exit 130)
 *   linux_outside_signal ignore        SIGINT and SIGTERM ignored; waits forever
 *   linux_outside_signal family        a child too, both handle SIGINT: each prints
 *                                      "got SIGINT in parent|child"; exits 3
 *   linux_outside_signal reraise       SIGINT handled, then, as Go and Python do, the
 *                                      default action restored and SIGINT raised again
 *                                      (pause): prints "ready", "cleaning up"; killed
 *
 * It says "SIGHUP ignored" after "ready" when it was started with SIGHUP ignored.
 * WAIT is how it waits: pause, read (stdin, which the test keeps open and silent),
 * sleep (nanosleep, 60 s), spin (ring-3 loop, no system call). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got;

static void on_int(int s) {
    (void)s;
    got = 1;
}

static void handle(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_int;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* Wait as `how` says until a handled signal came (or forever). */
static void wait_for_signal(const char *how) {
    while (!got) {
        if (strcmp(how, "pause") == 0) {
            pause();
        } else if (strcmp(how, "read") == 0) {
            char c;
            ssize_t n = read(0, &c, 1);
            if (n < 0 && errno == EINTR)
                printf("read: EINTR\n");
            else if (n == 0)
                pause();
        } else if (strcmp(how, "sleep") == 0) {
            struct timespec t = {60, 0}, left;
            if (nanosleep(&t, &left) < 0 && errno == EINTR)
                printf("nanosleep: EINTR\n");
        } else {
            /* spin: no system call until the handler ran. */
        }
    }
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "handle";
    const char *how = argc > 2 ? argv[2] : "pause";
    if (strcmp(mode, "ignore") == 0) {
        signal(SIGINT, SIG_IGN);
        signal(SIGTERM, SIG_IGN);
        printf("ready\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    if (strcmp(mode, "family") == 0) {
        handle(SIGINT);
        pid_t child = fork();
        if (child == 0) {
            wait_for_signal("pause");
            printf("got SIGINT in child\n");
            return 5;
        }
        printf("ready\n");
        fflush(stdout);
        wait_for_signal("pause");
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
        }
        printf("got SIGINT in parent, child exited %d\n", WEXITSTATUS(status));
        return 3;
    }
    if (strcmp(mode, "reraise") == 0) {
        handle(SIGINT);
        printf("ready\n");
        fflush(stdout);
        wait_for_signal("pause");
        printf("cleaning up\n");
        fflush(stdout);
        signal(SIGINT, SIG_DFL);
        raise(SIGINT);
        return 4;
    }
    if (strcmp(mode, "handle") == 0)
        handle(SIGINT);
    printf("ready\n");
    /* Inherited from whoever started it (nohup). */
    struct sigaction hup;
    if (sigaction(SIGHUP, NULL, &hup) == 0 && hup.sa_handler == SIG_IGN)
        printf("SIGHUP ignored\n");
    fflush(stdout);
    wait_for_signal(how);
    printf("got SIGINT\n");
    return 3;
}
