/* /proc as a threaded process sees itself, in words that do not depend on its ids:
 * /proc/self/task has one entry per thread (the main thread and two others), each
 * thread's task/TID/comm is the name it set (having started with its creator's), /proc/self/status says its pid, parent and
 * thread count, /proc/PID/stat and cmdline of its child are the child's, and /proc lists
 * the process and its child. Run natively and under `lbrprof run --vm --`, the output is
 * the same. */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static pthread_barrier_t started, done;
static char main_name[16];
static int inherited[2], thread_self[2];

static void read_line(const char *path, char *buf, size_t len);

static void *worker(void *arg) {
    char name[16];
    /* A new thread starts with its creator's name. */
    prctl(PR_GET_NAME, name);
    inherited[(long)arg - 1] = !strcmp(name, main_name);
    snprintf(name, sizeof name, "worker-%ld", (long)arg);
    prctl(PR_SET_NAME, name);
    char seen[64];
    read_line("/proc/thread-self/comm", seen, sizeof seen);
    thread_self[(long)arg - 1] = !strcmp(seen, name);
    pthread_barrier_wait(&started);
    pthread_barrier_wait(&done);
    return NULL;
}

/* The value of "Key:" in /proc/self/status, or -1. */
static long status_field(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    char line[512];
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':')
            v = strtol(line + n + 1, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

static int numeric(const char *s) {
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static void read_line(const char *path, char *buf, size_t len) {
    FILE *f = fopen(path, "r");
    buf[0] = 0;
    if (f && fgets(buf, (int)len, f))
        buf[strcspn(buf, "\n")] = 0;
    if (f)
        fclose(f);
}

int main(void) {
    pthread_t t[2];
    prctl(PR_GET_NAME, main_name);
    pthread_barrier_init(&started, NULL, 3);
    pthread_barrier_init(&done, NULL, 3);
    for (long i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, worker, (void *)(i + 1));
    pthread_barrier_wait(&started);

    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int tasks = 0, own = 0, named = 0;
    while (d && (e = readdir(d))) {
        if (!numeric(e->d_name))
            continue;
        tasks++;
        char path[300], comm[64];
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        read_line(path, comm, sizeof comm);
        if (atol(e->d_name) == getpid())
            own += 1;
        else if (!strncmp(comm, "worker-", 7))
            named += 1;
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        if (status_field(path, "Pid") != atol(e->d_name) ||
            status_field(path, "Tgid") != getpid())
            printf("task %s: WRONG ids\n", e->d_name);
    }
    if (d)
        closedir(d);
    printf("tasks: %d (main %d, named workers %d)\n", tasks, own, named);
    printf("status: pid %s, ppid %s, threads %ld\n",
           status_field("/proc/self/status", "Pid") == getpid() ? "ok" : "WRONG",
           status_field("/proc/self/status", "PPid") == getppid() ? "ok" : "WRONG",
           status_field("/proc/self/status", "Threads"));
    pthread_barrier_wait(&done);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    printf("inherited names: %s\n", inherited[0] && inherited[1] ? "ok" : "WRONG");
    printf("thread-self comm: %s\n", thread_self[0] && thread_self[1] ? "ok" : "WRONG");

    int pipefd[2];
    if (pipe(pipefd))
        return 1;
    pid_t child = fork();
    if (child == 0) {
        char c;
        close(pipefd[1]);
        prctl(PR_SET_NAME, "the-child");
        /* Wait until the parent has looked. */
        if (read(pipefd[0], &c, 1) < 0)
            return 1;
        _exit(0);
    }
    close(pipefd[0]);
    /* The child names itself before the parent looks: wait for the name. */
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%d/comm", (int)child);
    for (int tries = 0; tries < 10000 && strcmp(comm, "the-child"); tries++) {
        read_line(path, comm, sizeof comm);
        if (strcmp(comm, "the-child"))
            usleep(1000);
    }
    printf("child comm: %s\n", comm);
    snprintf(path, sizeof path, "/proc/%d/status", (int)child);
    printf("child status: ppid %s, tgid %s\n",
           status_field(path, "PPid") == getpid() ? "ok" : "WRONG",
           status_field(path, "Tgid") == child ? "ok" : "WRONG");
    char stat[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)child);
    read_line(path, stat, sizeof stat);
    int spid = 0, sppid = 0;
    char state = 0;
    sscanf(stat, "%d (the-child) %c %d", &spid, &state, &sppid);
    printf("child stat: pid %s, ppid %s\n", spid == child ? "ok" : "WRONG",
           sppid == getpid() ? "ok" : "WRONG");
    char cmdline[256] = "";
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)child);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(cmdline, 1, sizeof cmdline - 1, f) : 0;
    if (f)
        fclose(f);
    const char *base = strrchr(cmdline, '/');
    printf("child cmdline: %s (%zu bytes)\n", base ? base + 1 : cmdline, n);
    int listed_self = 0, listed_child = 0;
    d = opendir("/proc");
    while (d && (e = readdir(d))) {
        listed_self += atol(e->d_name) == getpid();
        listed_child += atol(e->d_name) == child;
    }
    if (d)
        closedir(d);
    printf("/proc lists: self %d, child %d\n", listed_self, listed_child);
    if (write(pipefd[1], "x", 1) != 1)
        return 1;
    /* Ended and not waited for: a zombie, with no arguments any more. */
    snprintf(path, sizeof path, "/proc/%d/stat", (int)child);
    for (int tries = 0; tries < 10000 && state != 'Z'; tries++) {
        read_line(path, stat, sizeof stat);
        sscanf(stat, "%d (the-child) %c", &spid, &state);
        if (state != 'Z')
            usleep(1000);
    }
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)child);
    f = fopen(path, "r");
    n = f ? fread(cmdline, 1, sizeof cmdline - 1, f) : 99;
    if (f)
        fclose(f);
    printf("zombie: state %c, cmdline %zu bytes\n", state, n);
    int status;
    waitpid(child, &status, 0);
    snprintf(path, sizeof path, "/proc/%d", (int)child);
    printf("reaped: %s\n", access(path, F_OK) ? "gone" : "WRONG");
    return 0;
}
