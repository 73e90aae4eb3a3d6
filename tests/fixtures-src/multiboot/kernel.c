/* A tiny multiboot v1 test kernel for lbrprof's VMM shim: prints through the 16550 UART,
 * reads fw_cfg and its multiboot info, starts the APs with INIT/SIPI when asked, and
 * exits through the isa-debug-exit port with the code given on its command line.
 *
 * Command line words: exit=N (exit status N, default 0 = power off), smp (start APs),
 * triple (triple-fault on purpose), hang (spin forever, for --timeout), halt (cli; hlt
 * for good), probe (touch an I/O port and an MMIO address no device claims). */
#include <stdint.h>

static inline void outb(uint16_t p, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outw(uint16_t p, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(p)); }
static inline uint8_t inb(uint16_t p) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }

#define COM1 0x3f8

static void uart_init(void) {
    outb(COM1 + 1, 0x00); /* IER: no interrupts */
    outb(COM1 + 3, 0x80); /* LCR: DLAB */
    outb(COM1 + 0, 0x01); /* DLL: 115200 baud */
    outb(COM1 + 1, 0x00); /* DLM */
    outb(COM1 + 3, 0x03); /* LCR: 8N1 */
    outb(COM1 + 2, 0xc7); /* FCR: FIFO on, cleared */
    outb(COM1 + 4, 0x0b); /* MCR: DTR, RTS, OUT2 */
}

static void putc(char c) {
    while (!(inb(COM1 + 5) & 0x20)) { }
    outb(COM1, (uint8_t)c);
}

static void puts(const char *s) { while (*s) putc(*s++); }

static void putu(uint64_t v) {
    char b[24]; int i = 0;
    do { b[i++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (i) putc(b[--i]);
}

static void putx(uint64_t v) {
    puts("0x");
    for (int s = 60; s >= 0; s -= 4) putc("0123456789abcdef"[(v >> s) & 0xf]);
}

static void fw_cfg_read(uint16_t key, void *buf, uint32_t len) {
    outw(0x510, key);
    for (uint32_t i = 0; i < len; i++) ((uint8_t *)buf)[i] = inb(0x511);
}

struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
};

struct __attribute__((packed)) mb_mmap {
    uint32_t size;
    uint64_t addr, len;
    uint32_t type;
};

/* Find "key=" in the command line and parse a decimal number after it. */
static int word(const char *cmd, const char *w, uint32_t *value) {
    for (const char *p = cmd; *p; p++) {
        if (p != cmd && p[-1] != ' ') continue;
        const char *a = p, *b = w;
        while (*b && *a == *b) { a++; b++; }
        if (*b) continue;
        if (*a == '=' && value) {
            uint32_t v = 0;
            for (a++; *a >= '0' && *a <= '9'; a++) v = v * 10 + (uint32_t)(*a - '0');
            *value = v;
            return 1;
        }
        if (*a == ' ' || *a == 0) return 1;
    }
    return 0;
}

extern char ap_trampoline[], ap_trampoline_end[];

static void lapic_write(uint32_t reg, uint32_t v) { *(volatile uint32_t *)(0xfee00000u + reg) = v; }
static uint32_t lapic_read(uint32_t reg) { return *(volatile uint32_t *)(0xfee00000u + reg); }

static uint32_t start_aps(uint16_t ncpus) {
    volatile uint16_t *count = (volatile uint16_t *)0x7ff0;
    *count = 0;
    uint8_t *dst = (uint8_t *)0x9000;
    for (char *s = ap_trampoline; s < ap_trampoline_end; s++) *dst++ = (uint8_t)*s;
    lapic_write(0x310, 0);
    lapic_write(0x300, 0x000c4500); /* INIT, all excluding self */
    while (lapic_read(0x300) & 0x1000) { }
    for (int i = 0; i < 2; i++) {
        lapic_write(0x300, 0x000c4609); /* STARTUP, vector 0x09 -> 0x9000 */
        while (lapic_read(0x300) & 0x1000) { }
    }
    for (uint32_t spin = 0; spin < 2000000 && *count < ncpus - 1; spin++) __asm__ volatile("pause");
    return *count;
}

uint32_t kmain(uint32_t magic, struct mb_info *mbi) {
    uart_init();
    puts(magic == 0x2badb002 ? "multiboot: magic ok\n" : "multiboot: BAD MAGIC\n");
    const char *cmd = (mbi->flags & 4) ? (const char *)mbi->cmdline : "";
    if (mbi->flags & 1) {
        puts("multiboot: mem_lower="); putu(mbi->mem_lower);
        puts(" mem_upper="); putu(mbi->mem_upper); puts("\n");
    }
    puts("multiboot: cmdline="); puts(cmd); puts("\n");
    if (mbi->flags & 64) {
        uint32_t n = 0; uint64_t avail = 0;
        for (uint32_t off = 0; off < mbi->mmap_length;) {
            struct mb_mmap *e = (struct mb_mmap *)(mbi->mmap_addr + off);
            n++;
            if (e->type == 1) avail += e->len;
            off += e->size + 4;
        }
        puts("multiboot: mmap entries="); putu(n); puts(" available="); putx(avail); puts("\n");
    }
    char sig[5] = {0};
    uint16_t cpus = 0;
    uint64_t ram = 0;
    fw_cfg_read(0x0000, sig, 4);
    fw_cfg_read(0x0005, &cpus, 2);
    fw_cfg_read(0x0003, &ram, 8);
    puts("fw_cfg: signature="); puts(sig); puts(" cpus="); putu(cpus); puts(" ram="); putx(ram); puts("\n");
    if (word(cmd, "smp", 0) && cpus > 1) {
        puts("smp: "); putu(start_aps(cpus)); puts(" APs started\n");
    }
    if (word(cmd, "probe", 0)) {
        for (int i = 0; i < 3; i++) outb(0x80, (uint8_t)i); /* POST code port */
        uint32_t v = *(volatile uint32_t *)0xd0000000u;      /* nothing there */
        puts("probe: mmio="); putx(v); puts("\n");
    }
    if (word(cmd, "triple", 0)) {
        puts("triple: faulting now\n");
        struct __attribute__((packed)) { uint16_t limit; uint32_t base; } idt = {0, 0};
        __asm__ volatile("lidt %0; ud2" ::"m"(idt));
    }
    if (word(cmd, "halt", 0)) {
        puts("halt: halting with interrupts off\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    if (word(cmd, "hang", 0)) {
        puts("hang: spinning\n");
        for (;;) __asm__ volatile("pause");
    }
    uint32_t code = 0;
    word(cmd, "exit", &code);
    if (code == 0) {
        outw(0x604, 0x2000); /* power off */
    }
    return code;
}
