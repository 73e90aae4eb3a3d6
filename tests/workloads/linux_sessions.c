/* Sessions and controlling terminals: what setsid, setpgid, forkpty (login_tty's
 * TIOCSCTTY), /dev/tty, TIOCGSID, tcsetpgrp and a session leader's end do. Printed
 * in the parent so that the output is in one order. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

static int hup_pipe[2];

static void on_hup(int sig) {
    (void)sig;
    if (write(hup_pipe[1], "hup\n", 4) != 4) _exit(9);
}

static void drain(int master) {
    char buf[256];
    for (;;) {
        ssize_t n = read(master, buf, sizeof buf);
        if (n <= 0) break; /* EIO once the slave side is closed everywhere */
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != '\r') putchar(buf[i]);
    }
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("group leader: %s\n", getpgrp() == getpid() ? "yes" : "no");
    printf("getpgid(0) is getpgrp: %s\n", getpgid(0) == getpgrp() ? "yes" : "no");
    printf("getsid(0) is getsid(pid): %s\n", getsid(0) == getsid(getpid()) ? "yes" : "no");

    /* A group leader may not start a session; a new session has no terminal. */
    pid_t c = fork();
    if (c == 0) {
        setpgid(0, 0);
        int r = setsid();
        printf("setsid of a group leader: %s\n", r < 0 && errno == EPERM ? "EPERM" : "allowed");
        _exit(0);
    }
    waitpid(c, NULL, 0);
    c = fork();
    if (c == 0) {
        pid_t s = setsid();
        printf("setsid: %s\n", s == getpid() && getsid(0) == s && getpgrp() == s ? "ok" : "wrong");
        int fd = open("/dev/tty", O_RDWR);
        printf("/dev/tty with no terminal: %s\n", fd < 0 && errno == ENXIO ? "ENXIO" : "opened");
        printf("setpgid of a session leader: %s\n", setpgid(0, 0) < 0 && errno == EPERM ? "EPERM" : "allowed");
        _exit(0);
    }
    waitpid(c, NULL, 0);

    /* forkpty: the child leads a session whose terminal is the pty. */
    int master;
    c = forkpty(&master, NULL, NULL, NULL);
    if (c < 0) { perror("forkpty"); return 1; }
    if (c == 0) {
        printf("child leads its session: %s\n", getsid(0) == getpid() ? "yes" : "no");
        printf("foreground is its group: %s\n", tcgetpgrp(0) == getpgrp() ? "yes" : "no");
        pid_t sid = 0;
        printf("TIOCGSID: %s\n", ioctl(0, TIOCGSID, &sid) == 0 && sid == getpid() ? "its own" : "wrong");
        const char *name = ttyname(0);
        printf("ttyname: %s\n", name && strncmp(name, "/dev/pts/", 9) == 0 ? "/dev/pts/N" : "none");
        int tty = open("/dev/tty", O_WRONLY);
        if (tty >= 0) { dprintf(tty, "written to /dev/tty\n"); close(tty); }
        else printf("/dev/tty: %s\n", strerror(errno));
        /* A job in its own group, made the foreground one. */
        pid_t job = fork();
        if (job == 0) {
            setpgid(0, 0);
            while (tcgetpgrp(0) != getpgrp()) usleep(1000);
            printf("the job is in the foreground: yes\n");
            _exit(0);
        }
        setpgid(job, job);
        signal(SIGTTOU, SIG_IGN);
        printf("tcsetpgrp: %s\n", tcsetpgrp(0, job) == 0 ? "ok" : strerror(errno));
        waitpid(job, NULL, 0);
        printf("tcsetpgrp to another session's group: %s\n",
               tcsetpgrp(0, getppid()) < 0 && errno == EPERM ? "EPERM" : "allowed");
        tcsetpgrp(0, getpgrp());
        _exit(0);
    }
    drain(master);
    waitpid(c, NULL, 0);
    close(master);

    /* A session leader's end hangs up its terminal: its foreground group gets SIGHUP. */
    if (pipe(hup_pipe) != 0) return 1;
    c = forkpty(&master, NULL, NULL, NULL);
    if (c == 0) {
        close(hup_pipe[0]);
        pid_t g = fork();
        if (g == 0) {
            signal(SIGHUP, on_hup);
            write(1, "waiting\n", 8);
            pause();
            _exit(0);
        }
        char buf[16];
        (void)buf;
        usleep(100000);
        _exit(0);
    }
    close(hup_pipe[1]);
    char buf[16] = {0};
    ssize_t n = read(hup_pipe[0], buf, sizeof buf - 1);
    printf("the foreground group after its leader ended: %s", n > 0 ? buf : "no SIGHUP\n");
    waitpid(c, NULL, 0);
    close(master);
    return 0;
}
