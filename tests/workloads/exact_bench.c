/* A static C benchmark for exact mode against valgrind (bench/exact-speed):
 * qsort, a checksum loop, trial division (DIV) and memset/memcpy/strlen from libc.
 *
 *   exact_bench [N]     (default 200000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static unsigned long rng = 88172645463325252UL;
static unsigned long xs(void){ rng ^= rng<<13; rng ^= rng>>7; rng ^= rng<<17; return rng; }
static int cmp(const void*a,const void*b){ unsigned x=*(const unsigned*)a,y=*(const unsigned*)b; return x<y?-1:x>y; }
__attribute__((noinline)) unsigned long checksum(const unsigned *v, int n){ unsigned long s=0; for(int i=0;i<n;i++) s = s*31 + v[i]; return s; }
__attribute__((noinline)) int count_primes(int lim){ int c=0; for(int i=2;i<lim;i++){ int p=1; for(int d=2; d*d<=i; d++) if(i%d==0){p=0;break;} c+=p;} return c; }
int main(int argc,char**argv){ int n = argc>1?atoi(argv[1]):200000; unsigned *v=malloc(n*sizeof *v); for(int i=0;i<n;i++) v[i]=xs();
 qsort(v,n,sizeof *v,cmp); char *buf=malloc(n); memset(buf,'a',n); memcpy(buf, v, n/2);
 printf("%lu %d %zu\n", checksum(v,n), count_primes(n/4), strlen(buf)); return 0; }
