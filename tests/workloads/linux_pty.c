/* Pseudo terminals and termios, for tests/linux.rs: posix_openpt (open /dev/ptmx),
 * grantpt, unlockpt (TIOCSPTLCK), ptsname (TIOCGPTN) and the slave opened;
 * tcgetattr/tcsetattr (TCGETS, TCSETS) into raw mode; the window size set on the master
 * (TIOCSWINSZ) and read on the slave (TIOCGWINSZ); bytes written on each side read on
 * the other; and TCGETS writes the kernel's 36-byte struct termios, nothing past it
 * (glibc's tcgetattr passes a buffer of that size). Each step prints one line. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

/* Read one line (up to '\n') from `fd` into `buf`. */
static int read_line(int fd, char *buf, int size) {
    int n = 0;
    while (n < size - 1) {
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0)
            break;
        if (buf[n++] == '\n')
            break;
    }
    buf[n] = 0;
    return n;
}

int main(void) {
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0) {
        perror("posix_openpt");
        return 1;
    }
    if (grantpt(m) != 0 || unlockpt(m) != 0) {
        perror("grantpt/unlockpt");
        return 1;
    }
    const char *name = ptsname(m);
    if (!name) {
        perror("ptsname");
        return 1;
    }
    printf("ptsname: %s\n", strncmp(name, "/dev/pts/", 9) == 0 ? "/dev/pts/N" : name);
    int s = open(name, O_RDWR | O_NOCTTY);
    if (s < 0) {
        perror("open the slave");
        return 1;
    }
    printf("isatty: master %d, slave %d\n", isatty(m), isatty(s));
    struct termios t;
    if (tcgetattr(s, &t) != 0) {
        perror("tcgetattr");
        return 1;
    }
    printf("new terminal: echo %s, canonical %s\n", t.c_lflag & ECHO ? "on" : "off",
           t.c_lflag & ICANON ? "on" : "off");
    cfmakeraw(&t);
    if (tcsetattr(s, TCSANOW, &t) != 0) {
        perror("tcsetattr");
        return 1;
    }
    struct termios u;
    tcgetattr(s, &u);
    printf("raw: echo %s, canonical %s, opost %s\n", u.c_lflag & ECHO ? "on" : "off",
           u.c_lflag & ICANON ? "on" : "off", u.c_oflag & OPOST ? "on" : "off");
    struct winsize w = {.ws_row = 24, .ws_col = 100};
    if (ioctl(m, TIOCSWINSZ, &w) != 0)
        perror("TIOCSWINSZ");
    struct winsize v = {0};
    if (ioctl(s, TIOCGWINSZ, &v) != 0)
        perror("TIOCGWINSZ");
    printf("window: %d columns, %d rows\n", v.ws_col, v.ws_row);
    char buf[64];
    (void)!write(m, "to the slave\n", 13);
    read_line(s, buf, sizeof buf);
    printf("slave read: %s", buf);
    (void)!write(s, "to the master\n", 14);
    read_line(m, buf, sizeof buf);
    printf("master read: %s", buf);
    unsigned char raw[64];
    memset(raw, 0xaa, sizeof raw);
    if (syscall(SYS_ioctl, s, TCGETS, raw) != 0)
        perror("TCGETS");
    int past = 0;
    for (int i = 36; i < 64; i++)
        past += raw[i] != 0xaa;
    printf("TCGETS bytes written past 36: %d\n", past);
    return 0;
}
