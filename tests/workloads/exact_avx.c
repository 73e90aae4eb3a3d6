/* Exact mode on AVX2 code (tests/exact.rs, issue 14): glibc's string and memory
 * functions over many lengths and alignments (on a CPU with AVX2 glibc picks its
 * __*_avx2 versions: vmovdqu, vpcmpeqb, vpminub, vpmovmskb, vpbroadcastb, vzeroupper...)
 * and a loop of AVX2 and BMI1/BMI2 intrinsics, all folded into a checksum. Prints
 * whether the CPU (as the program sees it) has AVX2 and BMI2, then the checksum; the
 * test compares the output with the program run natively.
 *
 *     exact_avx ROUNDS */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char buf[8192], dst[8192];

__attribute__((target("avx2,bmi,bmi2"))) static uint64_t vector_work(size_t n, int needle) {
    __m256i nd = _mm256_set1_epi8((char)needle);
    __m128i nd16 = _mm_set1_epi16((short)needle);
    uint64_t sum = 0;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(buf + i));
        __m256i eq = _mm256_cmpeq_epi8(v, nd);
        unsigned m = (unsigned)_mm256_movemask_epi8(eq);
        __m256i mn = _mm256_min_epu8(v, nd);
        __m256i sh = _mm256_shuffle_epi8(v, mn);
        __m256i x = _mm256_xor_si256(sh, _mm256_add_epi32(v, mn));
        x = _mm256_alignr_epi8(x, v, 7);
        if (!_mm256_testz_si256(x, eq))
            sum += 3;
        __m128i lo = _mm_sub_epi8(_mm256_castsi256_si128(x), nd16);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_andnot_si256(eq, x));
        sum = sum * 31 + (uint64_t)_mm_cvtsi128_si64(lo);
        sum += _pext_u64(m, 0x5555aaaa33ccULL) + _pdep_u32(m, 0xf0f0f0f0u);
        sum += _blsr_u32(m) + _blsmsk_u32(m) + _blsi_u32(m) + _bzhi_u32(m, (unsigned)i & 31);
        /* Variable shifts and a rotate: SHLX, SHRX, SARX and RORX with BMI2. */
        sum += _andn_u32(m, (unsigned)i) + (sum << (i & 63)) + (m >> (i & 7));
        sum ^= (uint64_t)((int64_t)sum >> (m & 31)) + ((sum >> 13) | (sum << 51));
    }
    return sum;
}

static uint64_t string_work(int round) {
    uint64_t sum = 0;
    for (size_t len = 0; len < 300; len += 7) {
        size_t off = (size_t)(round * 13 + (int)len) % 61;
        unsigned char *s = buf + off;
        unsigned char saved = s[len];
        s[len] = 0;
        sum = sum * 131 + strlen((char *)s);
        const char *c = strchr((char *)s, 'q');
        sum += c ? (uint64_t)(c - (char *)s) : 7;
        const void *p = memchr(s, 'z', len);
        sum += p ? (uint64_t)((const unsigned char *)p - s) : 11;
        memcpy(dst + (len & 31), s, len);
        sum += (uint64_t)(memcmp(dst + (len & 31), s, len) == 0);
        dst[(len & 31) + len / 2] ^= 1;
        sum += (uint64_t)(memcmp(dst + (len & 31), s, len) + 2);
        dst[(len & 31) + len] = 0;
        sum += (uint64_t)(strcmp((char *)dst + (len & 31), (char *)s) + 5);
        memset(dst + off, (int)len, len);
        memmove(dst + 3, dst + off, len);
        sum += dst[3 + len / 3];
        s[len] = saved;
    }
    return sum;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof buf; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (unsigned char)('a' + (x >> 16) % 26);
    }
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
    printf("avx2 %d\n", avx2);
    uint64_t sum = 0;
    for (int r = 0; r < rounds; r++) {
        sum = sum * 7 + string_work(r);
        if (avx2)
            sum += vector_work(sizeof buf - (size_t)r * 32, 'a' + r % 26);
    }
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
