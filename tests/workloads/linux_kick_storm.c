/* System-call results survive kicks: a child makes 10000 system calls whose results
 * it checks (getppid, and a write/read round trip through a pipe) while its parent
 * sends it SIGUSR1 (handled) as fast as it can, so that many signals arrive while a
 * call is being serviced (each kicks the child's vCPU out of KVM_RUN). Prints the
 * number of wrong results (0) and whether signals arrived. */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static void on_usr1(int s) { (void)s; got++; }

int main(void) {
    int p[2];
    if (pipe(p) != 0) return 1;
    pid_t parent = getpid();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    pid_t c = fork();
    if (c == 0) {
        long bad = 0;
        while (!got) /* the storm has begun */
            sched_yield();
        for (long i = 0; i < 10000; i++) {
            if (syscall(SYS_getppid) != parent) bad++;
            if ((i & 15) == 0) {
                char b = (char)i, r = 0;
                if (write(p[1], &b, 1) != 1 || read(p[0], &r, 1) != 1 || r != b) bad++;
            }
        }
        printf("wrong results: %ld, signals %s\n", bad, got > 0 ? "arrived" : "none");
        fflush(stdout);
        _exit(0);
    }
    int st;
    long sent = 0;
    while (waitpid(c, &st, WNOHANG) == 0) {
        kill(c, SIGUSR1);
        sent++;
    }
    printf("child exited %d after %s signals\n", WEXITSTATUS(st), sent > 10 ? "many" : "few");
    return 0;
}
