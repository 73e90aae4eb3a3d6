/* A process that exits while its other threads are blocked (in futex waits, in a
 * nanosleep loop) or spinning, for tests/linux_compat.rs: its parent reads the pipe the
 * child wrote to until the end of the file, which comes only when every thread of the
 * child is gone and its descriptors with them (`go version | cut`, rustc, any threaded
 * program in a pipeline). The child is this program again (/proc/self/exe MODE). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;

static void *waiter(void *a) {
    (void)a;
    pthread_mutex_lock(&m);
    for (;;)
        pthread_cond_wait(&c, &m);
}

static void *sleeper(void *a) {
    (void)a;
    struct timespec t = {0, 20000};
    for (;;)
        nanosleep(&t, NULL);
}

static void *spinner(void *a) {
    (void)a;
    for (volatile long i = 0;; i++)
        ;
}

int main(int argc, char **argv) {
    if (argc > 1) {
        int mode = atoi(argv[1]);
        pthread_t t;
        if (mode & 1)
            for (int i = 0; i < 3; i++)
                pthread_create(&t, NULL, waiter, NULL);
        if (mode & 2)
            pthread_create(&t, NULL, sleeper, NULL);
        if (mode & 4)
            pthread_create(&t, NULL, spinner, NULL);
        usleep(20000);
        printf("child mode %d\n", mode);
        exit(mode);
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int mode = 1; mode <= 7; mode++) {
        int p[2];
        pipe(p);
        pid_t k = fork();
        if (k == 0) {
            dup2(p[1], 1);
            close(p[0]);
            close(p[1]);
            char b[4];
            snprintf(b, sizeof b, "%d", mode);
            execl("/proc/self/exe", argv[0], b, (char *)0);
            _exit(127);
        }
        close(p[1]);
        char buf[64];
        ssize_t n, total = 0;
        while ((n = read(p[0], buf, sizeof buf)) > 0)
            total += n;
        close(p[0]);
        int st;
        waitpid(k, &st, 0);
        printf("mode %d: read %zd to the end, exit status %d\n", mode, total, WEXITSTATUS(st));
    }
    return 0;
}
