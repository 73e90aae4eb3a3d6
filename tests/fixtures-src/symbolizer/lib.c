/* Fixture for tests/symbolize.rs: a shared library with a known function. */
__attribute__((noinline)) int lib_add(int a, int b) { /* LINE:lib_add */
	return a * 3 + b; /* LINE:lib_add_body */
}

int lib_entry(int x) { /* LINE:lib_entry */
	return lib_add(x, 1);
}
