/* A small bytecode interpreter: a dispatch switch, an inlined helper, calls, a
 * data-dependent branch. tests/pgo.rs builds it with clang-16 -O2 -gline-tables-only,
 * records it in the VM with the emulated LBR and checks the PGO exports against
 * perf2bolt, llvm-bolt, create_llvm_prof, llvm-profdata and clang. */
#include <stdio.h>
#include <stdlib.h>

enum op { PUSH, ADD, MUL, MIX, JNZ, DUP, DROP, HALT };

static inline unsigned mix(unsigned x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    return x;
}

static unsigned __attribute__((noinline)) slow_path(unsigned v) {
    unsigned r = 0;
    for (int i = 0; i < 8; i++)
        r += mix(v + i);
    return r;
}

static unsigned run(const int *code, unsigned seed) {
    unsigned stack[64];
    int sp = 0, pc = 0;
    stack[sp++] = seed;
    for (;;) {
        switch (code[pc++]) {
        case PUSH: stack[sp++] = (unsigned)code[pc++]; break;
        case ADD: sp--; stack[sp - 1] += stack[sp]; break;
        case MUL: sp--; stack[sp - 1] *= stack[sp] | 1; break;
        case MIX:
            if ((stack[sp - 1] & 15) == 0)
                stack[sp - 1] = slow_path(stack[sp - 1]);
            else
                stack[sp - 1] = mix(stack[sp - 1]);
            break;
        case JNZ: if (--stack[0] & 1023) pc = code[pc]; else pc++; break;
        case DUP: stack[sp] = stack[sp - 1]; sp++; break;
        case DROP: sp--; break;
        case HALT: return stack[sp - 1];
        }
    }
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 3000;
    static const int code[] = {DUP, PUSH, 7, ADD, MIX, PUSH, 3, MUL, DROP, JNZ, 0, HALT};
    unsigned acc = 0;
    for (int r = 0; r < rounds; r++)
        acc += run(code, (unsigned)r * 2654435761u);
    printf("%u\n", acc);
    return 0;
}
