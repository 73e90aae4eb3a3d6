/* Multiboot v1 entry for the test kernel: header, stack, call kmain, exit via 0xf4. */
    .set MB_MAGIC, 0x1BADB002
#ifdef AOUT_KLUDGE
    /* page-align modules, want memory info, load addresses in this header (bit 16):
       for a flat binary (objcopy -O binary) without an ELF header. */
    .set MB_FLAGS, 0x00010003
#else
    .set MB_FLAGS, 0x00000003          /* page-align modules, want memory info */
#endif

    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
#ifdef AOUT_KLUDGE
    .long mb_header                    /* header_addr */
    .long _load_start                  /* load_addr */
    .long _load_end                    /* load_end_addr */
    .long _bss_end                     /* bss_end_addr */
    .long _start                       /* entry_addr */
#endif

    .text
    .code32
    .global _start
_start:
    mov $stack_top, %esp
    push %ebx                          /* multiboot info */
    push %eax                          /* boot loader magic */
    call kmain
    mov $0xf4, %dx                     /* isa-debug-exit: status (eax << 1) | 1 */
    outl %eax, %dx
1:  cli
    hlt
    jmp 1b

/* Real-mode trampoline the APs start in after SIPI; copied to 0x9000 by kmain. */
    .global ap_trampoline, ap_trampoline_end
    .code16
ap_trampoline:
    xor %ax, %ax
    mov %ax, %ds
    lock incw 0x7ff0
2:  cli
    hlt
    jmp 2b
ap_trampoline_end:
    .code32

    .bss
    .align 16
stack:
    .skip 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
