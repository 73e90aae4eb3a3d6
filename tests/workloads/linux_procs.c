/* Processes under the Linux personality: fork, pipes between processes, exec, wait
 * statuses, vfork, waitid, kill, select, chdir/getcwd. Its output is compared byte for
 * byte with a native run (tests/linux_processes.rs). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <unistd.h>

static void show(const char *what, int st) {
    if (WIFEXITED(st)) printf("%s: exited %d\n", what, WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) printf("%s: killed by %d\n", what, WTERMSIG(st));
    else printf("%s: status %#x\n", what, st);
}

int main(int argc, char **argv) {
    int st;
    setvbuf(stdout, NULL, _IONBF, 0);
    /* fork + a pipe: the child writes, the parent reads to EOF. */
    int p[2];
    if (pipe(p)) return 1;
    pid_t c = fork();
    if (c == 0) {
        close(p[0]);
        for (int i = 0; i < 1000; i++) dprintf(p[1], "%d\n", i);
        _exit(3);
    }
    close(p[1]);
    char buf[4096];
    long total = 0, n;
    while ((n = read(p[0], buf, sizeof buf)) > 0) total += n;
    close(p[0]);
    printf("read %ld bytes from the child\n", total);
    printf("waitpid gives the child: %d\n", waitpid(c, &st, 0) == c);
    show("child", st);
    printf("no more children: %d\n", waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD);

    /* exec through fork, output on our stdout. */
    if ((c = fork()) == 0) {
        execl("/bin/echo", "echo", "exec'ed echo", (char *)0);
        _exit(127);
    }
    waitpid(c, &st, 0);
    show("echo", st);
    /* A program that is not there: execve's error, seen by the child. */
    if ((c = fork()) == 0) {
        execl("/nonexistent/prog", "prog", (char *)0);
        _exit(errno == ENOENT ? 40 : 41);
    }
    waitpid(c, &st, 0);
    show("missing program", st);
    /* vfork + exec, the shell's way; the parent waits. */
    if ((c = vfork()) == 0) {
        execl("/bin/sh", "sh", "-c", "exit 5", (char *)0);
        _exit(127);
    }
    waitpid(c, &st, 0);
    show("vfork sh", st);
    /* posix_spawn (vfork with CLONE_VM: the child shares the parent's memory until it
     * execs, and reports a failed exec through it). */
    extern char **environ;
    char *sargs[] = {"echo", "spawned", NULL};
    printf("spawn missing: %d\n", posix_spawn(&c, "/nonexistent/prog", NULL, NULL, sargs, environ));
    int sr = posix_spawnp(&c, "echo", NULL, NULL, sargs, environ);
    waitpid(c, &st, 0);
    printf("spawnp echo: %d\n", sr);
    show("spawned echo", st);
    /* waitid with WEXITED. */
    if ((c = fork()) == 0) _exit(9);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    waitid(P_PID, c, &si, WEXITED);
    printf("waitid: pid ok %d, code %d, status %d\n", si.si_pid == c, si.si_code, si.si_status);
    /* kill: the child polls with system calls until the signal ends it. */
    if ((c = fork()) == 0) {
        for (;;) getppid();
    }
    kill(c, SIGTERM);
    waitpid(c, &st, 0);
    show("killed child", st);
    /* select on a pipe with data, and on one without (timeout 0). */
    if (pipe(p)) return 1;
    if (write(p[1], "x", 1) != 1) return 1;
    fd_set r;
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    struct timeval tv = {1, 0};
    printf("select ready: %d, fd set %d\n", select(p[0] + 1, &r, NULL, NULL, &tv), FD_ISSET(p[0], &r));
    if (read(p[0], buf, 1) != 1) return 1;
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    tv.tv_sec = 0;
    printf("select empty: %d\n", select(p[0] + 1, &r, NULL, NULL, &tv));
    /* chdir/getcwd, and relative paths after it; a child inherits the directory. */
    if (chdir(argc > 1 ? argv[1] : "/")) return 1;
    printf("cwd: %s\n", getcwd(buf, sizeof buf));
    printf("relative access: %d\n", access("b", F_OK));
    if ((c = fork()) == 0) {
        execl("/bin/ls", "ls", (char *)0);
        _exit(127);
    }
    waitpid(c, &st, 0);
    show("ls", st);
    if (chdir("..")) return 1;
    printf("cwd after ..: %s\n", getcwd(buf, sizeof buf));
    return 4;
}
