/* Fixture for tests/symbolize_llvm.rs: a shared library laid out as glibc's are, where
 * the names a stripped library exports (.dynsym) differ from its full symbol table's and
 * from the DWARF's. */
#define NOINLINE __attribute__((noinline))

/* A static helper that gcc -O2 specializes for its one constant argument: its symbol is
 * `scale.constprop.0`, its DWARF name `scale`; not exported. */
static NOINLINE int scale(int x, int k)
{
	volatile int v = x;
	return v * k + (v >> 3);
}

/* Defined under an internal name and exported under both it and a public alias, as
 * glibc's `__libc_malloc` and `malloc`: two .dynsym entries at one address. */
NOINLINE int __libc_compute(int x)
{
	return scale(x, 7) + 1;
}
extern __typeof(__libc_compute) compute __attribute__((alias("__libc_compute")));

/* Defined under its public name with a hidden internal alias, as glibc's `__GI_` names:
 * the alias is in the full symbol table only. */
NOINLINE int measure(int x)
{
	return scale(x, 7) * 2;
}
extern __typeof(measure) __GI_measure __attribute__((alias("measure"), visibility("hidden")));

/* A hidden function: in the full symbol table, not exported. */
__attribute__((visibility("hidden"))) NOINLINE int internal_step(int x)
{
	return __GI_measure(x) - compute(x);
}

int entry(int x)
{
	return internal_step(x) + measure(x);
}
