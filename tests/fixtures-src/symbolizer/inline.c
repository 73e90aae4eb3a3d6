/* Fixture for tests/symbolize.rs: known functions and lines, and a helper that is inlined
 * (default) or not (-DNO_INLINE). Lines the tests check are tagged with LINE:<tag>; keep a
 * tag on the same line as the code it names. */
#include <stdlib.h>

#ifdef NO_INLINE
#define HELPER __attribute__((noinline))
#else
#define HELPER static inline __attribute__((always_inline))
#endif

HELPER int helper(int x) { /* LINE:helper */
	return x * x + (x >> 3); /* LINE:helper_body */
}

__attribute__((noinline)) int outer(int n) { /* LINE:outer */
	int s = 0;
	for (int i = 0; i < n; i++)
		s += helper(i) ^ n; /* LINE:call_helper */
	return s;
}

__attribute__((noinline)) static int local_function(int n) { /* LINE:local_function */
	return outer(n) + 1;
}

int main(int argc, char **argv) { /* LINE:main */
	return local_function(argc > 1 ? atoi(argv[1]) : 3) & 1;
}
