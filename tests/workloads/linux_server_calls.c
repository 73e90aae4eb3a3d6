/* What a server's processes ask of the kernel, as postgres's do, for tests/linux_compat.rs:
 * prctl(PR_SET_PDEATHSIG) (a grandchild told of its parent's end, a forked child not
 * inheriting the setting, a bad signal refused), and sync_file_range on a written file. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static int report_fd;

static void on_usr1(int sig, siginfo_t *si, void *ctx) {
    (void)ctx;
    char line[64];
    int n = snprintf(line, sizeof line, "grandchild: signal %d, code %d\n", sig, si->si_code);
    write(report_fd, line, n);
    _exit(0);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int sig = -1;
    int r = prctl(PR_GET_PDEATHSIG, &sig);
    printf("initial: %d, pdeathsig %d\n", r, sig);
    r = prctl(PR_SET_PDEATHSIG, 65);
    printf("bad signal: %d %s\n", r, strerror(errno));
    printf("set: %d\n", prctl(PR_SET_PDEATHSIG, SIGTERM));
    prctl(PR_GET_PDEATHSIG, &sig);
    printf("now: %d\n", sig);

    int report[2], ready[2];
    pipe(report);
    pipe(ready);
    pid_t child = fork();
    if (child == 0) {
        int mine = -1;
        prctl(PR_GET_PDEATHSIG, &mine);
        printf("child inherits: %d\n", mine);
        if (fork() == 0) {
            report_fd = report[1];
            struct sigaction sa = {0};
            sa.sa_sigaction = on_usr1;
            sa.sa_flags = SA_SIGINFO;
            sigaction(SIGUSR1, &sa, NULL);
            prctl(PR_SET_PDEATHSIG, SIGUSR1);
            write(ready[1], "r", 1);
            for (;;)
                pause();
        }
        char r;
        read(ready[0], &r, 1);
        _exit(3); /* the grandchild's parent ends */
    }
    close(report[1]);
    int status;
    waitpid(child, &status, 0);
    printf("child exited %d\n", WEXITSTATUS(status));
    char line[64] = {0};
    ssize_t n = read(report[0], line, sizeof line - 1);
    printf("%s", n > 0 ? line : "grandchild: nothing\n");

    char path[] = "/tmp/lbrprof-sfr-XXXXXX";
    int fd = mkstemp(path);
    write(fd, "some data\n", 10);
    printf("sync_file_range: %d\n",
           sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                         SYNC_FILE_RANGE_WAIT_AFTER));
    r = sync_file_range(fd, 0, 0, 0x80);
    printf("sync_file_range bad flags: %d %s\n", r, strerror(errno));
    unlink(path);
    close(fd);
    return 0;
}
