/* System V shared memory between processes, for tests/linux_shared.rs: shmget (private
 * and keyed, with Linux's errors), shmat at a chosen or a free address, attachments
 * inherited by fork and counted, a process-shared semaphore in a segment, shmdt,
 * shmctl (IPC_STAT, IPC_SET, IPC_RMID). Prints only what does not depend on the host's
 * other segments. */
#define _GNU_SOURCE
#include <errno.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *err(int r) { return r < 0 ? strerror(errno) : "ok"; }

static unsigned long attached(int id) {
    struct shmid_ds ds;
    return shmctl(id, IPC_STAT, &ds) == 0 ? (unsigned long)ds.shm_nattch : 999;
}

struct shared {
    sem_t lock;
    long counter;
    char text[64];
};

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int id = shmget(IPC_PRIVATE, 10000, IPC_CREAT | 0600);
    printf("shmget private: %s\n", err(id));
    struct shared *s = shmat(id, NULL, 0);
    printf("shmat: %s, zeroed %d\n", s == (void *)-1 ? strerror(errno) : "ok", s->counter == 0);
    struct shmid_ds ds;
    shmctl(id, IPC_STAT, &ds);
    printf("IPC_STAT: size %zu, attached %lu, mode %o, creator is us %d\n", (size_t)ds.shm_segsz,
           (unsigned long)ds.shm_nattch, ds.shm_perm.mode & 0777, ds.shm_cpid == getpid());
    strcpy(s->text, "from the parent");
    sem_init(&s->lock, 1, 1);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            /* Inherited attachment, and a second one of our own elsewhere. */
            struct shared *again = shmat(id, NULL, 0);
            if (k == 0)
                printf("child: inherited sees '%s', second attachment sees '%s'\n", s->text,
                       again->text);
            for (int i = 0; i < 20000; i++) {
                sem_wait(&again->lock);
                again->counter++;
                sem_post(&again->lock);
            }
            if (k == 0)
                strcpy(again->text, "from a child");
            shmdt(again);
            _exit(0);
        }
    }
    for (int k = 0; k < 2; k++)
        waitpid(kids[k], NULL, 0);
    printf("parent: counter %ld, text '%s', attached %lu\n", s->counter, s->text, attached(id));
    /* A fixed address, and SHM_RND. */
    char *hint = (char *)s + (1 << 24);
    char *at = shmat(id, hint + 100, SHM_RND);
    printf("shmat SHM_RND: %s, at the hint %d, same memory %d\n",
           at == (void *)-1 ? strerror(errno) : "ok", at == hint, ((struct shared *)at)->counter == s->counter);
    char *bad = shmat(id, hint + 100, 0);
    printf("shmat unaligned: %s\n", bad == (void *)-1 ? strerror(errno) : "mapped");
    printf("shmdt: %s", err(shmdt(at)));
    printf(", again: %s, attached %lu\n", err(shmdt(at)), attached(id));
    /* IPC_SET. */
    ds.shm_perm.mode = 0640;
    printf("IPC_SET: %s", err(shmctl(id, IPC_SET, &ds)));
    shmctl(id, IPC_STAT, &ds);
    printf(", mode now %o\n", ds.shm_perm.mode & 0777);
    /* Keys. */
    key_t key = (key_t)(0x4c420000 ^ (getpid() << 4) ^ (int)time(NULL));
    int k1 = shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0600);
    printf("keyed create: %s\n", err(k1));
    int r = shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0600);
    printf("again with IPC_EXCL: %s\n", err(r));
    r = shmget(key, 0, 0);
    printf("lookup: %s, same id %d\n", err(r), r == k1);
    r = shmget(key, 8192, 0);
    printf("larger than it: %s\n", err(r));
    printf("IPC_RMID keyed: %s\n", err(shmctl(k1, IPC_RMID, NULL)));
    r = shmget(key, 4096, 0);
    printf("lookup after IPC_RMID: %s\n", err(r));
    r = shmget(IPC_PRIVATE, 0, IPC_CREAT | 0600);
    printf("size 0: %s\n", err(r));
    /* The last detach of a removed segment. */
    printf("shmdt: %s\n", err(shmdt(s)));
    printf("IPC_RMID: %s\n", err(shmctl(id, IPC_RMID, NULL)));
    printf("IPC_STAT after: %s\n", err(shmctl(id, IPC_STAT, &ds)));
    return 0;
}
