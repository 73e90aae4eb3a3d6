/* AVX state across signal handlers (tests/linux_compat.rs): a handler that clobbers the
 * upper halves of the YMM registers must not change the interrupted code's, and a
 * handler that edits the saved state in its frame (uc_mcontext.fpregs, the XSAVE area
 * after FP_XSTATE_MAGIC1) changes what the interrupted code gets back, as on Linux.
 * Prints what it saw; the test compares with the program run natively. */
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

#define MAGIC1 0x46505853u

static volatile int edit;            /* the handler edits the frame's saved ymm8 */
static volatile unsigned magic_seen; /* sw_reserved magic1 of the last frame */
static volatile sig_atomic_t alarms;

static void clobber(void) {
    __asm__ volatile("vpcmpeqd %%ymm8, %%ymm8, %%ymm8\n\t"
                     "vpcmpeqd %%ymm9, %%ymm9, %%ymm9" ::: "xmm8", "xmm9");
}

static void on_usr1(int sig, siginfo_t *si, void *ctx) {
    (void)sig, (void)si;
    clobber();
    ucontext_t *uc = ctx;
    unsigned char *fp = (unsigned char *)uc->uc_mcontext.fpregs;
    memcpy((void *)&magic_seen, fp + 464, 4);
    if (edit && magic_seen == MAGIC1) {
        unsigned a, b, c, d;
        __cpuid_count(0xd, 2, a, b, c, d); /* EBX: offset of the YMM upper halves */
        memset(fp + b + 8 * 16, 0x5a, 16); /* ymm8's upper half */
    }
    __asm__ volatile("vzeroupper");
}

static void on_alarm(int sig) {
    (void)sig;
    clobber();
    alarms++;
}

/* Load ymm8 with `in`, send ourselves SIGUSR1 (delivered on the way out of kill), then
 * store ymm8 to `out`: nothing of the compiler's runs between. */
static void through_signal(const uint64_t in[4], uint64_t out[4]) {
    long pid = getpid();
    __asm__ volatile("vmovdqu (%[in]), %%ymm8\n\t"
                     "mov $62, %%eax\n\t"
                     "mov %[pid], %%rdi\n\t"
                     "mov $10, %%esi\n\t"
                     "syscall\n\t"
                     "vmovdqu %%ymm8, (%[out])\n\t"
                     "vzeroupper"
                     :
                     : [in] "r"(in), [out] "r"(out), [pid] "r"(pid)
                     : "rax", "rdi", "rsi", "rcx", "r11", "xmm8", "memory");
}

int main(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 28)) || !(c & (1u << 27))) {
        printf("no AVX\n");
        return 0;
    }
    struct sigaction sa = {0};
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, 0);
    uint64_t in[4] = {0x1111111111111111, 0x2222222222222222, 0x3333333333333333,
                      0x4444444444444444};
    uint64_t out[4];
    through_signal(in, out);
    printf("magic %s\n", magic_seen == MAGIC1 ? "xstate" : "legacy");
    printf("kept %s\n", memcmp(in, out, 32) ? "no" : "yes");
    edit = 1;
    through_signal(in, out);
    printf("edited low %s high %016llx %016llx\n", memcmp(in, out, 16) ? "changed" : "kept",
           (unsigned long long)out[2], (unsigned long long)out[3]);

    /* Signals that arrive while a loop keeps values in the upper halves. */
    signal(SIGALRM, on_alarm);
    struct itimerval it = {{0, 2000}, {0, 2000}};
    setitimer(ITIMER_REAL, &it, 0);
    unsigned long bad = 0, rounds = 0;
    while (alarms < 50) {
        uint64_t v[4] = {rounds, ~rounds, rounds * 3, rounds ^ 0x5555};
        uint64_t w[4];
        __asm__ volatile("vmovdqu (%[v]), %%ymm9\n\t"
                         "mov $200000, %%ecx\n"
                         "1: dec %%ecx\n\t"
                         "jnz 1b\n\t"
                         "vmovdqu %%ymm9, (%[w])\n\t"
                         "vzeroupper"
                         :
                         : [v] "r"(v), [w] "r"(w)
                         : "rcx", "xmm9", "memory");
        bad += memcmp(v, w, 32) != 0;
        rounds++;
    }
    struct itimerval off = {0};
    setitimer(ITIMER_REAL, &off, 0);
    printf("async %s\n", bad ? "corrupted" : "intact");
    return 0;
}
