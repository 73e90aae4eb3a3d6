/* The shared library of follow_burn -DUSE_LIB:
 *   gcc -O1 -g -fno-omit-frame-pointer -shared -fPIC -o libfollow.so follow_lib.c */
__attribute__((noinline)) unsigned long lib_spin(unsigned long n)
{
    unsigned long s = 7;
    for (unsigned long i = 0; i < n; i++)
        s = (s << 5) ^ (s >> 2) ^ (i * 3);
    return s;
}
