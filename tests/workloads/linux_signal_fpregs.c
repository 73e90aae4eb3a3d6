/* A signal handler's view of the FPU through uc_mcontext.fpregs, compared with a
 * native run: the interrupted x87/SSE state is there (at a fault and at a raise),
 * the handler itself starts with the initial state, and what it writes there is
 * what the program has after the handler returns. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>

static int fp_set;
static double seen_xmm0;
static long double seen_st0;
static unsigned seen_mxcsr, handler_mxcsr;

static void on_ill(int sig, siginfo_t *si, void *ucv)
{
    (void)sig;
    (void)si;
    ucontext_t *uc = ucv;
    fpregset_t fp = uc->uc_mcontext.fpregs;
    fp_set = fp != NULL;
    if (fp) {
        memcpy(&seen_xmm0, &fp->_xmm[0], sizeof seen_xmm0);
        memcpy(&seen_st0, &fp->_st[0], 10);
        double d = 2.5;
        memcpy(&fp->_xmm[1], &d, sizeof d);
        long double x = 7.25L;
        memcpy(&fp->_st[0], &x, 10);
    }
    uc->uc_mcontext.gregs[REG_RIP] += 2; /* past the ud2 */
}

static void on_usr1(int sig, siginfo_t *si, void *ucv)
{
    (void)sig;
    (void)si;
    ucontext_t *uc = ucv;
    unsigned cur;
    __asm__ volatile("stmxcsr %0" : "=m"(cur));
    handler_mxcsr = cur;
    fpregset_t fp = uc->uc_mcontext.fpregs;
    if (fp) {
        seen_mxcsr = fp->mxcsr;
        fp->mxcsr = (fp->mxcsr & ~0x6000u) | 0x4000u; /* round up */
    }
}

static void handle(int sig, void (*fn)(int, siginfo_t *, void *))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO;
    sigaction(sig, &sa, NULL);
}

int main(void)
{
    handle(SIGILL, on_ill);
    double in0 = 1.5, out1 = 0;
    long double st_in = 3.75L, st_out = 0;
    __asm__ volatile("movsd %[in0], %%xmm0\n\t"
                     "xorpd %%xmm1, %%xmm1\n\t"
                     "fldt %[stin]\n\t"
                     "ud2\n\t"
                     "movsd %%xmm1, %[out1]\n\t"
                     "fstpt %[stout]\n\t"
                     : [out1] "=m"(out1), [stout] "=m"(st_out)
                     : [in0] "m"(in0), [stin] "m"(st_in)
                     : "xmm0", "xmm1", "memory");
    printf("fault: fpregs set %s, xmm0 %g, st0 %Lg; after return xmm1 %g, st0 %Lg\n",
           fp_set ? "yes" : "no", seen_xmm0, seen_st0, out1, st_out);

    handle(SIGUSR1, on_usr1);
    unsigned down = 0x1f80 | 0x2000, after = 0;
    __asm__ volatile("ldmxcsr %0" : : "m"(down));
    raise(SIGUSR1);
    __asm__ volatile("stmxcsr %0" : "=m"(after));
    unsigned dflt = 0x1f80;
    __asm__ volatile("ldmxcsr %0" : : "m"(dflt));
    printf("raise: fpregs mxcsr %#x, the handler ran with %#x, after return %#x\n", seen_mxcsr,
           handler_mxcsr, after);
    return 0;
}
