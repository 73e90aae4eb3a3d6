/* Resource limits for tests/linux_compat.rs: setrlimit/getrlimit/prlimit as a program sees
 * them (the VM keeps them per process, not in lbrprof's host process), RLIMIT_NOFILE
 * enforced on new descriptors, inherited by fork and kept across execve. Prints only what
 * does not depend on the host's own limits. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static void show(const char *what, int resource) {
    struct rlimit r;
    if (getrlimit(resource, &r) != 0) {
        printf("%s: getrlimit failed: %s\n", what, strerror(errno));
        return;
    }
    printf("%s: soft %llu\n", what, (unsigned long long)r.rlim_cur);
}

int main(int argc, char **argv) {
    if (argc > 1) { /* exec'ed by the parent below */
        show("after exec, core", RLIMIT_CORE);
        show("after exec, nofile", RLIMIT_NOFILE);
        return 0;
    }
    /* Descriptors the caller left open would change the counts below. */
    for (int fd = 3; fd < 64; fd++)
        close(fd);
    struct rlimit r;
    int e;
    /* What gpg and ssh-agent do first: no core dumps. */
    r.rlim_cur = r.rlim_max = 0;
    printf("setrlimit core 0: %d\n", setrlimit(RLIMIT_CORE, &r));
    show("core", RLIMIT_CORE);
    /* Raising a hard limit back up: refused, or allowed to a privileged user. */
    r.rlim_cur = 0;
    r.rlim_max = 1 << 20;
    int up = setrlimit(RLIMIT_CORE, &r);
    e = errno;
    printf("raise core hard: %d %s\n", up, up ? strerror(e) : "");
    /* Soft above hard. */
    getrlimit(RLIMIT_STACK, &r);
    if (r.rlim_max != RLIM_INFINITY) {
        r.rlim_cur = r.rlim_max + 1;
        int rc = setrlimit(RLIMIT_STACK, &r);
        e = errno;
        printf("soft > hard: %d %s\n", rc, strerror(e));
    } else {
        printf("soft > hard: -1 %s\n", strerror(EINVAL));
    }
    int rc = getrlimit(99, &r);
    e = errno;
    printf("bad resource: %d %s\n", rc, strerror(e));
    /* The descriptor limit bounds new descriptors. */
    getrlimit(RLIMIT_NOFILE, &r);
    r.rlim_cur = 12;
    printf("setrlimit nofile 12: %d\n", setrlimit(RLIMIT_NOFILE, &r));
    int opened = 0, last = -1;
    for (;;) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd < 0) {
            printf("open after %d: %s (last fd %d)\n", opened, strerror(errno), last);
            break;
        }
        opened++;
        last = fd;
    }
    rc = dup2(0, 12);
    e = errno;
    printf("dup2 to 12: %d %s\n", rc, strerror(e));
    rc = fcntl(0, F_DUPFD, 12);
    e = errno;
    printf("F_DUPFD 12: %d %s\n", rc, strerror(e));
    close(last);
    struct rlimit got;
    printf("prlimit self: %d", prlimit(getpid(), RLIMIT_NOFILE, NULL, &got));
    printf(" soft %llu\n", (unsigned long long)got.rlim_cur);
    /* A child inherits them; an exec keeps them. */
    pid_t c = fork();
    if (c == 0) {
        show("child, nofile", RLIMIT_NOFILE);
        fflush(stdout);
        for (int fd = 3; fd < 12; fd++)
            close(fd);
        execl("/proc/self/exe", argv[0], "exec", (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(c, &st, 0);
    printf("child exit %d\n", WEXITSTATUS(st));
    return 0;
}
