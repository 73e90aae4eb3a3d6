/* The program bench/pgo-loop optimises: zstd (the library source the zstd-sys crate
 * ships) compressing and decompressing a generated text corpus at levels 1 to 6, so
 * that five match finders (fast, double-fast, greedy, lazy, lazy2), the entropy
 * coders and the decoder are all hot: branchy code with a large instruction footprint.
 *
 * The corpus is compressed in CHUNK_KB pieces (small messages, as a log shipper or an
 * RPC layer compresses them): per-frame setup, table building and block headers then
 * weigh as much as the match loops, and more of zstd's code is hot.
 *
 * usage: zbench ROUNDS CORPUS_KB CHUNK_KB   (prints a checksum of what it produced) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

static unsigned long long rng = 88172645463325252ull;
static unsigned next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)rng;
}

/* Text with a skewed vocabulary, numbers and punctuation: compressible, not trivially. */
static size_t corpus(char *out, size_t size) {
    static const char *words[] = {
        "the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was",
        "for", "on", "are", "as", "with", "his", "they", "at", "be", "this", "have",
        "from", "or", "one", "had", "by", "word", "but", "not", "what", "all", "were",
        "we", "when", "your", "can", "said", "there", "use", "an", "each", "which",
        "branch", "record", "profile", "kernel", "guest", "compiler", "optimise",
        "function", "register", "interrupt", "sample", "buffer", "latency"};
    const size_t nwords = sizeof words / sizeof *words;
    size_t n = 0;
    while (n + 32 < size) {
        unsigned r = next();
        unsigned w = (r % 7 == 0) ? r % nwords : (r >> 8) % 12;
        n += (size_t)sprintf(out + n, "%s", words[w]);
        if (r % 23 == 0) n += (size_t)sprintf(out + n, " %u", next() % 100000);
        out[n++] = (r % 17 == 0) ? '.' : (r % 11 == 0) ? ',' : ' ';
        if (r % 97 == 0) out[n++] = '\n';
    }
    return n;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 4;
    size_t size = (size_t)(argc > 2 ? atoi(argv[2]) : 2048) * 1024;
    size_t chunk = (size_t)(argc > 3 ? atoi(argv[3]) : 2048) * 1024;
    if (chunk == 0) return 1;
    char *src = malloc(size), *back = malloc(size);
    size_t bound = ZSTD_compressBound(size);
    char *dst = malloc(bound);
    if (!src || !back || !dst) return 1;
    size_t n = corpus(src, size);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    unsigned long long sum = 0;
    for (int r = 0; r < rounds; r++) {
        for (int level = 1; level <= 6; level++) {
            for (size_t at = 0; at < n; at += chunk) {
                size_t len = n - at < chunk ? n - at : chunk;
                size_t c = ZSTD_compressCCtx(cctx, dst, bound, src + at, len, level);
                if (ZSTD_isError(c)) return 2;
                size_t d = ZSTD_decompressDCtx(dctx, back, size, dst, c);
                if (ZSTD_isError(d) || d != len || memcmp(back, src + at, len) != 0) return 3;
                sum = sum * 31 + c;
            }
        }
    }
    printf("%zu bytes, checksum %llu\n", n, sum);
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
    return 0;
}
