/* Job control on the controlling terminal (stdin), as a shell does it: the foreground
 * process group (tcgetpgrp), handing the terminal to a child's group and taking it back
 * (tcsetpgrp, with SIGTTOU ignored), a group that does not exist, a descriptor that is
 * not the terminal. Prints one line per step (tests/linux_outside.rs runs it natively and
 * in the VM on the same pseudo terminal and compares). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void step(const char *what, int r) {
    printf("%s %d %s\n", what, r, r < 0 ? strerror(errno) : "");
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGTTOU, SIG_IGN);
    pid_t me = getpgrp();
    printf("foreground_is_mine %d\n", tcgetpgrp(0) == me);
    int p[2];
    if (pipe(p) != 0) return 2;
    pid_t c = fork();
    if (c == 0) {
        char b;
        setpgid(0, 0);
        if (read(p[0], &b, 1) != 1) _exit(3);
        _exit(0);
    }
    setpgid(c, c);
    step("give_to_child", tcsetpgrp(0, c));
    printf("foreground_is_child %d\n", tcgetpgrp(0) == c);
    step("take_back", tcsetpgrp(0, me));
    printf("foreground_is_mine %d\n", tcgetpgrp(0) == me);
    step("no_such_group", tcsetpgrp(0, 999999));
    int null = open("/dev/null", O_RDONLY);
    step("not_a_terminal", tcgetpgrp(null));
    if (write(p[1], "x", 1) != 1) return 4;
    int status;
    waitpid(c, &status, 0);
    printf("child %d\n", WEXITSTATUS(status));
    return 0;
}
