/* svdq-edge native kernels: quantized matmul from GGML blocks, dequantization, packed latent-K
 * scores. The bodies (kernels_impl.h) are compiled once per path: scalar (baseline ISA), AVX2+FMA,
 * AVX-512 on x86-64; on aarch64 the scalar copy (auto-vectorized), explicit NEON for plain
 * armv8-a, and NEON with the dotprod extension (armv8.2-a, e.g. Cortex-A76; not Cortex-A72/A53).
 * The path is chosen at run time from the CPU's features and can be forced (svdq_set_path) for tests.
 * Threads: OpenMP across weight rows; every entry point checks sizes before touching memory. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)     /* the kernel's AT_HWCAP bit for dotprod, where libc lacks it */
#endif
#endif
#endif
#include "svdq_edge.h"

enum { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30,
       Q5_0X4 = 106, Q8_0X4 = 108 /* Q5_0, Q8_0 repacked for decode (x4_row), not GGML types */ };
enum { PATH_AUTO = -1, PATH_SCALAR = 0, PATH_AVX2 = 1, PATH_AVX512 = 2, PATH_NEON = 3, PATH_NEON_DOT = 4 };

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline float h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    if (e == 0) { float v = (float)m * 5.960464477539063e-08f; return sign ? -v : v; }
    bits = e == 31 ? (sign | 0x7f800000u | (m << 13)) : (sign | ((e + 112) << 23) | (m << 13));
    float f; memcpy(&f, &bits, 4); return f;
}

static inline float bf2f(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f; }

/* K-quants (Q4_K, Q5_K): six-bit scale and min of sub-block j (0..7) from the 12 packed bytes sc */
static inline void scale_min_k4(const uint8_t *sc, int j, int *s, int *mn) {
    if (j < 4) { *s = sc[j] & 63; *mn = sc[j + 4] & 63; }
    else { *s = (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4); *mn = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4); }
}

/* bytes per block and elements per block, by type (a table, as in quants.py) */
static int64_t type_row_bytes(int T, int64_t k) {
    switch (T) {
    case F32: return k * 4;
    case F16: case BF16: return k * 2;
    case Q4_0: return k % 32 ? -1 : k / 32 * 18;
    case Q4_1: return k % 32 ? -1 : k / 32 * 20;
    case Q5_0: return k % 32 ? -1 : k / 32 * 22;
    case Q5_0X4: return k % 128 ? -1 : k / 32 * 22;
    case Q8_0X4: return k % 128 ? -1 : k / 32 * 34;
    case Q5_1: return k % 32 ? -1 : k / 32 * 24;
    case Q8_0: return k % 32 ? -1 : k / 32 * 34;
    case Q4_K: return k % 256 ? -1 : k / 256 * 144;
    case Q5_K: return k % 256 ? -1 : k / 256 * 176;
    case Q6_K: return k % 256 ? -1 : k / 256 * 210;
    default: return -2;
    }
}

/* the k-th largest (1 <= k <= m) of w (m,), reordering w: quickselect, median-of-three pivots */
static float select_kth(float *w, int64_t m, int64_t k) {
    int64_t lo = 0, hi = m - 1, want = m - k;               /* index in ascending order */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        float a = w[lo], b = w[mid], c = w[hi];
        const float p = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (w[i] < p) i++;
            while (w[j] > p) j--;
            if (i <= j) { const float t = w[i]; w[i] = w[j]; w[j] = t; i++; j--; }
        }
        if (want <= j) hi = j; else if (want >= i) lo = i; else break;
    }
    return w[want];
}

/* packed codes as floats by byte: LUT1[b] the 8 one-bit tokens of byte b, LUT2[b] its 4 two-bit
 * tokens (token i at bits w*i), filled when the library loads */
static float LUT1[256][8] __attribute__((aligned(32)));
static float LUT2[256][4] __attribute__((aligned(16)));

__attribute__((constructor)) static void fill_code_tables(void) {
    for (int b = 0; b < 256; b++) {
        for (int i = 0; i < 8; i++) LUT1[b][i] = (float)((b >> i) & 1);
        for (int i = 0; i < 4; i++) LUT2[b][i] = (float)((b >> (2 * i)) & 3);
    }
}

/* Repacked layouts, made at load time for the avx512 decode matvec: 4 blocks regrouped into one
 * quad of the same bytes, field by field: block i's bytes [src, src + len) go to quad offset
 * dst + len * i.
 *   Q5_0X4 (88 bytes, 128 values): the 16 nibble bytes (low nibble value l, high value 16 + l) at
 *     16i; a lo mask, little-endian, bit 16i + l = block i's fifth bit of value l, at 64; a hi
 *     mask (values 16 + l) at 72; the fp16 scales at 80. One 64-byte load takes the nibbles.
 *   Q8_0X4 (136 bytes): the 128 int8 codes in value order, then the 4 fp16 scales; two 64-byte
 *     loads take the codes.
 * The activations are put in the Q5_0X4 order once per call (prep_x4). */
typedef struct { int src, len, dst; } x4_field;
static const x4_field Q5_0X4_FIELDS[] = {{6, 16, 0}, {2, 2, 64}, {4, 2, 72}, {0, 2, 80}};
static const x4_field Q8_0X4_FIELDS[] = {{2, 32, 0}, {0, 2, 128}};

/* one row of nb blocks to T's quads (T = Q5_0X4 or Q8_0X4; back = 0) or back from them (back = 1) */
static void x4_row(const uint8_t *src, int64_t nb, int T, int back, uint8_t *dst) {
    const x4_field *f = T == Q5_0X4 ? Q5_0X4_FIELDS : Q8_0X4_FIELDS;
    const int nf = T == Q5_0X4 ? 4 : 2, bb = T == Q5_0X4 ? 22 : 34;
    for (int64_t q = 0; q < nb / 4; q++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < nf; j++) {
                const int64_t b = (4 * q + i) * bb + f[j].src, o = q * 4 * bb + f[j].dst + f[j].len * i;
                if (back) memcpy(dst + b, src + o, (size_t)f[j].len);
                else memcpy(dst + o, src + b, (size_t)f[j].len);
            }
}

/* the activations in quad order for Q5_0X4: xp (n, k) codes, per quad [values 0-15 of blocks
 * 0..3, values 16-31 of blocks 0..3]; xb (n, k/8) int32, per quad 16 lanes, lane 4i = -16 x the
 * code sum of block i (the codes' offset, added where the dot starts), the others 0 */
static void prep_x4(const int8_t *xq, const int32_t *xs, int64_t n, int64_t k, int8_t *xp, int32_t *xb) {
    for (int64_t t = 0; t < n; t++)
        for (int64_t q = 0; q < k / 128; q++) {
            int8_t *p = xp + t * k + 128 * q;
            int32_t *bq = xb + t * (k / 8) + 16 * q;
            for (int i = 0; i < 4; i++) {
                const int64_t b = 4 * q + i;
                memcpy(p + 16 * i, xq + t * k + 32 * b, 16);
                memcpy(p + 64 + 16 * i, xq + t * k + 32 * b + 16, 16);
                bq[4 * i] = -16 * (xs[t * (k / 16) + 2 * b] + xs[t * (k / 16) + 2 * b + 1]);
                bq[4 * i + 1] = bq[4 * i + 2] = bq[4 * i + 3] = 0;
            }
        }
}

/* per-thread rows un-repacked (Q5_0X4, Q8_0X4) for the paths without their kernels (grown, kept) */
static __thread uint8_t *x4_rows;
static __thread int64_t x4_cap;

static uint8_t *x4_scratch(int64_t bytes) {
    if (bytes > x4_cap) {
        uint8_t *p = (uint8_t *)realloc(x4_rows, (size_t)bytes);
        if (!p) return NULL;
        x4_rows = p; x4_cap = bytes;
    }
    return x4_rows;
}

/* a matmul call's quantized activations (quantize_q8), and where some weight's kernel wants them
 * in another order, that order (made once per call, shared by all rows and threads) */
typedef struct {
    int8_t *q;      /* (n, k) codes */
    float *d;       /* (n, k/32) scales */
    int32_t *s;     /* (n, k/16) code sums */
    int8_t *p;      /* (n, k) codes in Q5_0X4 order (prep_x4), or NULL */
    int32_t *b;     /* (n, k/8) Q5_0X4 offsets, or NULL */
    int8_t *k4;     /* (n, k) codes in Q4_K nibble order (prep_k4), or NULL */
    float *sdx;     /* (n, k/32) per 32 values: code sum x scale, or NULL */
    float *sf;      /* (n, k/32) per 32 values: code sum (for Q8_0X4's +128 offset), or NULL */
    uint8_t *own;   /* the block holding them when it is not the thread's kept one (freed after) */
} xacts;

/* per 256 values the 32-value blocks in the order a Q4_K superblock's nibbles hold them: a
 * 64-byte load of its codes is chunks 2g, 2g+1, low nibbles blocks 4g and 4g+2, high 4g+1 and
 * 4g+3; sdx[j] = S_j dx_j */
static void prep_k4(const int8_t *xq, const float *xd, const int32_t *xs, int64_t n, int64_t k, int8_t *k4, float *sdx) {
    static const int order[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int64_t t = 0; t < n; t++) {
        for (int64_t sb = 0; sb < k / 256; sb++)
            for (int j = 0; j < 8; j++)
                memcpy(k4 + t * k + 256 * sb + 32 * j, xq + t * k + 256 * sb + 32 * order[j], 32);
        for (int64_t j = 0; j < k / 32; j++)
            sdx[t * (k / 32) + j] = (float)(xs[t * (k / 16) + 2 * j] + xs[t * (k / 16) + 2 * j + 1]) * xd[t * (k / 32) + j];
    }
}

#define SFX _scalar
#include "kernels_impl.h"
#undef SFX

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SIMD_X86 1
#define SFX _avx2
#include "kernels_impl.h"
#undef SFX
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
#define SFX _avx512
#define X86_VNNI 1
#include "kernels_impl.h"
#undef X86_VNNI
#undef SFX
#undef SIMD_X86
#pragma GCC pop_options
#endif

#if defined(__aarch64__)
/* NEON copies: plain armv8-a (every aarch64 CPU), and dotprod, used only where the CPU reports it */
#define SIMD_NEON 1
#define SFX _neon
#include "kernels_impl.h"
#undef SFX

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#define NEON_DOT 1
#define SFX _neondot
#include "kernels_impl.h"
#undef SFX
#undef NEON_DOT
#pragma GCC pop_options
#undef SIMD_NEON
#endif

static int g_path = PATH_AUTO;
static int g_threads = 0;

int svdq_path_supported(int path) {
    if (path == PATH_SCALAR) return 1;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (path == PATH_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (path == PATH_AVX512) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                                    __builtin_cpu_supports("avx512vnni");
#elif defined(__aarch64__)
    if (path == PATH_NEON) return 1;
#if defined(__ARM_FEATURE_DOTPROD)
    if (path == PATH_NEON_DOT) return 1;
#elif defined(__linux__)
    if (path == PATH_NEON_DOT) return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
#endif
    return 0;
}

int svdq_active_path(void) {
    if (g_path != PATH_AUTO) return g_path;
#if defined(__x86_64__)
    if (svdq_path_supported(PATH_AVX512)) return PATH_AVX512;
    if (svdq_path_supported(PATH_AVX2)) return PATH_AVX2;
#elif defined(__aarch64__)
    return svdq_path_supported(PATH_NEON_DOT) ? PATH_NEON_DOT : PATH_NEON;
#endif
    return PATH_SCALAR;
}

int svdq_set_path(int path) {
    if (path != PATH_AUTO && !svdq_path_supported(path)) return -3;
    g_path = path;
    return 0;
}

void svdq_set_threads(int n) { g_threads = n > 0 ? n : 0; }
int svdq_get_threads(void) {
#ifdef _OPENMP
    return g_threads > 0 ? g_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int float_type(int T) { return T == F32 || T == F16 || T == BF16; }

static int check(int T, int64_t rows, int64_t row_bytes, int64_t k) {
    int64_t rb = type_row_bytes(T, k);
    if (rb == -2) return -1;
    if (rb < 0 || rows < 0 || k <= 0) return -3;
    if (rb != row_bytes) return -2;
    return 0;
}

/* chunked row ranges over threads */
#define PARALLEL_ROWS(rows, BODY) do { \
    int nt = svdq_get_threads(); int64_t nchunk = (rows) < 4 * nt ? (rows) : 4 * nt; if (nchunk < 1) nchunk = 1; \
    _Pragma("omp parallel for num_threads(nt) schedule(static)") \
    for (int64_t c = 0; c < nchunk; c++) { int64_t r0 = (rows) * c / nchunk, r1 = (rows) * (c + 1) / nchunk; BODY; } \
} while (0)

#if defined(__x86_64__)
#define BY_PATH(fn, ...) do { int p_ = svdq_active_path(); \
    if (p_ == PATH_AVX512) fn##_avx512(__VA_ARGS__); else if (p_ == PATH_AVX2) fn##_avx2(__VA_ARGS__); \
    else fn##_scalar(__VA_ARGS__); } while (0)
#elif defined(__aarch64__)
#define BY_PATH(fn, ...) do { int p_ = svdq_active_path(); \
    if (p_ == PATH_NEON_DOT) fn##_neondot(__VA_ARGS__); else if (p_ == PATH_NEON) fn##_neon(__VA_ARGS__); \
    else fn##_scalar(__VA_ARGS__); } while (0)
#else
#define BY_PATH(fn, ...) fn##_scalar(__VA_ARGS__)
#endif

#if defined(__x86_64__)
#define BY_PATH_R(rc, fn, ...) do { int p_ = svdq_active_path(); \
    if (p_ == PATH_AVX512) rc = fn##_avx512(__VA_ARGS__); else if (p_ == PATH_AVX2) rc = fn##_avx2(__VA_ARGS__); \
    else rc = fn##_scalar(__VA_ARGS__); } while (0)
#elif defined(__aarch64__)
#define BY_PATH_R(rc, fn, ...) do { int p_ = svdq_active_path(); \
    if (p_ == PATH_NEON_DOT) rc = fn##_neondot(__VA_ARGS__); else if (p_ == PATH_NEON) rc = fn##_neon(__VA_ARGS__); \
    else rc = fn##_scalar(__VA_ARGS__); } while (0)
#else
#define BY_PATH_R(rc, fn, ...) rc = fn##_scalar(__VA_ARGS__)
#endif

/* a decode call's activations live in a per-thread block kept between calls (grown, never more
 * than XA_KEEP bytes: prefill batches take their own block, freed after the call) */
#define XA_KEEP (1 << 20)
static __thread uint8_t *xa_arena;
static __thread size_t xa_cap;

static void xacts_free(xacts *a) { free(a->own); }

/* x (n, k) quantized; x4: some weight is Q5_0X4; k4: some weight is Q4_K (its avx512 decode
 * kernel reads the reordered codes, for n < 4); q8: some weight is Q8_0X4. One allocation. */
static int xacts_make(xacts *a, const float *x, int64_t n, int64_t k, int x4, int k4, int q8) {
    k4 = k4 && n < 4 && k % 256 == 0;
#define XA_UP(b) (((size_t)(b) + 63) & ~(size_t)63)
    const size_t nq = XA_UP(n * k), nd = XA_UP(n * (k / 32) * 4), ns = XA_UP(n * (k / 16) * 4);
    const size_t np = x4 ? nq : 0, nb = x4 ? XA_UP(n * (k / 8) * 4) : 0, nk = k4 ? nq : 0;
    const size_t nx = k4 ? nd : 0, nf = q8 ? nd : 0;
    const size_t total = nq + nd + ns + np + nb + nk + nx + nf;
#undef XA_UP
    uint8_t *base;
    a->own = NULL;
    if (total <= XA_KEEP) {
        if (total > xa_cap) {
            uint8_t *p = (uint8_t *)aligned_alloc(64, XA_KEEP);
            if (!p) return -5;
            free(xa_arena);
            xa_arena = p; xa_cap = XA_KEEP;
        }
        base = xa_arena;
    } else {
        base = a->own = (uint8_t *)aligned_alloc(64, total);
        if (!base) return -5;
    }
    a->q = (int8_t *)base; base += nq;
    a->d = (float *)base; base += nd;
    a->s = (int32_t *)base; base += ns;
    a->p = x4 ? (int8_t *)base : NULL; base += np;
    a->b = x4 ? (int32_t *)base : NULL; base += nb;
    a->k4 = k4 ? (int8_t *)base : NULL; base += nk;
    a->sdx = k4 ? (float *)base : NULL; base += nx;
    a->sf = q8 ? (float *)base : NULL;
    BY_PATH(quantize_q8, x, n, k, a->q, a->d, a->s);
    if (x4) prep_x4(a->q, a->s, n, k, a->p, a->b);
    if (k4) prep_k4(a->q, a->d, a->s, n, k, a->k4, a->sdx);
    if (q8) for (int64_t i = 0; i < n * (k / 32); i++) a->sf[i] = (float)(a->s[2 * i] + a->s[2 * i + 1]);
    return 0;
}

int svdq_matmul(const unsigned char *w, long long rows, long long row_bytes, int T,
                const float *x, long long n, long long k, float *out) {
    int e = check(T, rows, row_bytes, k);
    if (e) return e;
    if (n <= 0) return -3;
    if (float_type(T)) {
        PARALLEL_ROWS(rows, BY_PATH(mm_float_rows, w, row_bytes, T, x, n, k, r0, r1, rows, out));
        return 0;
    }
    xacts xa;
    if (xacts_make(&xa, x, n, k, T == Q5_0X4, T == Q4_K, T == Q8_0X4)) return -5;
    int err = 0;
    PARALLEL_ROWS(rows, {
        int e_;
        BY_PATH_R(e_, mm_dispatch, w, row_bytes, T, &xa, n, k, r0, r1, rows, out);
        if (e_) {
            _Pragma("omp atomic write")
            err = e_;
        }
    });
    xacts_free(&xa);
    return err;
}

/* Several weight matrices that read the same activations (q/k/v, gate/up): x is quantized once and
 * one parallel region covers all their rows, split by row count. Quantized types only (float
 * weights go through svdq_matmul). out[i]: (n, rows[i]). */
int svdq_matmul_multi(long long nw, const unsigned char **w, const long long *rows, const long long *row_bytes,
                      const int *types, const float *x, long long n, long long k, float **out) {
    if (nw <= 0 || nw > 8 || n <= 0) return -3;
    int64_t off[9];
    off[0] = 0;
    for (int64_t i = 0; i < nw; i++) {
        int e = check(types[i], rows[i], row_bytes[i], k);
        if (e) return e;
        if (float_type(types[i])) return -1;
        off[i + 1] = off[i] + rows[i];
    }
    int x4 = 0, k4 = 0, q8 = 0;
    for (int64_t i = 0; i < nw; i++) { x4 |= types[i] == Q5_0X4; k4 |= types[i] == Q4_K; q8 |= types[i] == Q8_0X4; }
    xacts xa;
    if (xacts_make(&xa, x, n, k, x4, k4, q8)) return -5;
    int err = 0;
    PARALLEL_ROWS(off[nw], {
        for (int64_t i = 0; i < nw; i++) {
            const int64_t lo = r0 > off[i] ? r0 : off[i];
            const int64_t hi = r1 < off[i + 1] ? r1 : off[i + 1];
            int e_ = 0;
            if (lo < hi)
                BY_PATH_R(e_, mm_dispatch, w[i], row_bytes[i], types[i], &xa, n, k, lo - off[i], hi - off[i], rows[i],
                          out[i]);
            if (e_) {
                _Pragma("omp atomic write")
                err = e_;
            }
        }
    });
    xacts_free(&xa);
    return err;
}

int svdq_dequant_rows(const unsigned char *w, long long rows, long long row_bytes, int T,
                      long long k, long long a0, long long a1, float *out) {
    int e = check(T, rows, row_bytes, k);
    if (e) return e;
    if (a0 < 0 || a1 > rows || a0 > a1) return -3;
    int64_t m = a1 - a0;
    PARALLEL_ROWS(m, BY_PATH(dequant_rows, w, row_bytes, T, k, a0 + r0, a0 + r1, out + r0 * k));
    return 0;
}

int svdq_get_rows(const unsigned char *w, long long rows, long long row_bytes, int T,
                  long long k, const long long *ids, long long m, float *out) {
    int e = check(T, rows, row_bytes, k);
    if (e) return e;
    for (long long i = 0; i < m; i++) if (ids[i] < 0 || ids[i] >= rows) return -4;
    for (long long i = 0; i < m; i++) BY_PATH(dequant_rows, w, row_bytes, T, k, ids[i], ids[i] + 1, out + i * k);
    return 0;
}

int svdq_latent_score(const unsigned char *c8, const unsigned char *c4, const unsigned char *c2,
                      const unsigned char *c1, long long n8, long long n4, long long n2, long long n1,
                      const unsigned short *scale, const unsigned short *mn, long long nblk,
                      const float *qt, long long m, long long B, long long rb, float *out) {
    if (n8 < 0 || n4 < 0 || n2 < 0 || n1 < 0 || n8 + n4 + n2 + n1 > 1024 || B <= 0 || B % 8 || nblk < 0 || m < 0)
        return -3;
    if (B > 1024 || rb < 0 || (rb && (rb % 8 || B % rb))) return -3;
    const int64_t r = n8 + n4 + n2 + n1, MQ = 64;           /* queries scored per pass */
    const int64_t sub = rb ? rb : B;                        /* tokens per query projection */
    const int nt = svdq_get_threads();
    /* per-thread scratch: base (MQ,) then acc (MQ, B), and a (MQ, r) */
    const size_t per = (size_t)(MQ + MQ * B + MQ * r + 1);
    float *scratch = (float *)malloc((size_t)nt * per * sizeof(float));
    if (!scratch) return -5;
    PARALLEL_ROWS(nblk, {
        float *acc = scratch + (size_t)thread_id() * per;
        for (int64_t b = r0; b < r1; b++)
            for (int64_t t0 = 0; t0 < B; t0 += sub) {
                /* rb > 0: qt (P/rb, m, r), the projection of rotation block (b*B + t0)/rb */
                const float *qb = rb ? qt + ((b * B + t0) / rb) * m * r : qt;
                for (int64_t i0 = 0; i0 < m; i0 += MQ)
                    BY_PATH(latent_block, c8, c4, c2, c1, n8, n4, n2, n1, scale, mn, b, qb + i0 * r, r, NULL,
                            m - i0 < MQ ? m - i0 : MQ, B, t0, t0 + sub, out + i0 * nblk * B, nblk * B, acc,
                            acc + MQ + MQ * B);
            }
    });
    free(scratch);
    return 0;
}

static int softmax_av(float *scores, const uint8_t *v, int vtype, int64_t vrb, int64_t nq, int64_t H, int64_t KV,
                      int64_t d, int64_t T, int kv_major, float *out);

/* the g score rows of query i, KV head kv: scores (nq, H, T), or kv_major (KV, nq, g, T) (a prefill
 * pass scored per KV head) */
static inline float *group_rows(float *s, int64_t i, int64_t kv, int64_t nq, int64_t H, int64_t KV, int64_t T,
                                int kv_major) {
    const int64_t g = H / KV;
    return s + (kv_major ? (kv * nq + i) * g : i * H + kv * g) * T;
}

static int topk_group_split(float *s, int64_t g, int64_t T, int64_t p0, int64_t n, int64_t k, const uint8_t *v,
                            int vtype, int64_t vrb, int64_t KV, int64_t d, int64_t kv, int nt, float *out);

/* Token sparsity of nq queries (one decode query, or a prefill pass): each query's KV head group
 * keeps its k best packed tokens (ranked by sav_topk) with the sinks and window; out (nq, H, d) =
 * acc / l per head. Only the kept tokens' weights are computed and their V rows read. With fewer
 * groups than threads (a decode query on one KV head), each group is split over the threads. */
static int topk_softmax_av(float *scores, const uint8_t *v, int vtype, int64_t vrb, int64_t nq, int64_t H,
                           int64_t KV, int64_t d, int64_t T, int64_t p0, int64_t n, int64_t k, int kv_major,
                           float *out) {
    const int64_t g = H / KV;
    const int nt = svdq_get_threads();
    if (nq * KV < nt && n >= 2048) {      /* fewer groups than threads (a decode query, one KV head) */
        for (int64_t grp = 0; grp < nq * KV; grp++) {
            const int64_t i = grp / KV, kv = grp % KV;
            const int rc = topk_group_split(group_rows(scores, i, kv, nq, H, KV, T, kv_major), g, T, p0, n, k, v,
                                            vtype, vrb, KV, d, kv, nt, out + (i * H + kv * g) * d);
            if (rc) return rc;
        }
        return 0;
    }
    const size_t per = (size_t)(2 * g + n + 2 * T + g * d);  /* per thread: m, l (g,), u (n,), w, idx (T,), acc (g, d) */
    float *work = (float *)malloc((size_t)nt * per * sizeof(float));
    if (!work) return -5;
    PARALLEL_ROWS(nq * KV, for (int64_t grp = r0; grp < r1; grp++) {
        float *m = work + (size_t)thread_id() * per;
        float *l = m + g;
        float *u = l + g;
        float *w = u + n;
        int32_t *idx = (int32_t *)(w + T);
        float *acc = (float *)(idx + T);
        const int64_t i = grp / KV;
        const int64_t kv = grp % KV;
        BY_PATH(sav_topk, group_rows(scores, i, kv, nq, H, KV, T, kv_major), g, T, p0, n, k, v, vtype, vrb, KV, d,
                kv, m, u, w, idx, acc, l);
        for (int64_t h = 0; h < g; h++) {
            const float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
            for (int64_t e = 0; e < d; e++) out[(i * H + kv * g + h) * d + e] = acc[h * d + e] * inv;
        }
    });
    free(work);
    return 0;
}

static inline int team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* One query's KV head group of g heads s (g rows, stride T) under token sparsity on all nt threads
 * (sav_topk's steps split by token range): the heads' maxima and the ranks u of each thread's
 * range, the cut once, then each thread's kept tokens with their own sums; out (g, d) = their
 * total over the total weight (every range uses the same maxima m_h, so nothing is rescaled). */
static int topk_group_split(float *s, int64_t g, int64_t T, int64_t p0, int64_t n, int64_t k, const uint8_t *v,
                            int vtype, int64_t vrb, int64_t KV, int64_t d, int64_t kv, int nt, float *out) {
    /* shared: mt (nt, g) range maxima, u (n,), w (n,) and bins (n,) for the cut; per thread: m, l
     * (g,), w (T,), idx (T,), acc (g, d) */
    const size_t per = (size_t)(2 * g + 2 * T + g * d);
    float *buf = (float *)malloc(((size_t)(nt * g + 3 * n) + (size_t)nt * per) * sizeof(float));
    if (!buf) return -5;
    float *mt = buf, *u = mt + nt * g, *wsh = u + n;
    int32_t *bins = (int32_t *)(wsh + n);
    float *thr = (float *)(bins + n);
    float cut = -INFINITY;
    int nth = 1;
    _Pragma("omp parallel num_threads(nt)")
    {
        const int id = thread_id(), team = team_size();
        float *m = thr + (size_t)id * per;
        float *l = m + g;
        float *w = l + g;
        int32_t *idx = (int32_t *)(w + T);
        float *acc = (float *)(idx + T);
        const int64_t a = T * id / team, b = T * (id + 1) / team;
        BY_PATH(group_max, s, g, T, a, b, mt + id * g);
        _Pragma("omp barrier")
        for (int64_t h = 0; h < g; h++) {
            float mx = -INFINITY;
            for (int j = 0; j < team; j++) mx = mt[j * g + h] > mx ? mt[j * g + h] : mx;
            m[h] = mx;
        }
        const int64_t ua = a > p0 ? a : p0, ub = b < p0 + n ? b : p0 + n;
        if (ua < ub) BY_PATH(group_u, s, g, T, p0, ua, ub, m, u);
        _Pragma("omp barrier")
        _Pragma("omp single")
        {
            nth = team;
            BY_PATH(kth_cut, u, n, k, wsh, bins, &cut);
        }                                                   /* (single ends with a barrier) */
        BY_PATH(sav_kept, s, g, T, p0, n, a, b, cut, m, u, v, vtype, vrb, KV, d, kv, w, idx, acc, l);
    }
    for (int64_t h = 0; h < g; h++) {
        float L = 0.0f;
        float *o = out + h * d;
        for (int64_t e = 0; e < d; e++) o[e] = 0.0f;
        for (int j = 0; j < nth; j++) {
            const float *m = thr + (size_t)j * per;
            L += m[g + h];
            const float *acc = m + 2 * g + 2 * T + h * d;
            for (int64_t e = 0; e < d; e++) o[e] += acc[e];
        }
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        for (int64_t e = 0; e < d; e++) o[e] *= inv;
    }
    free(buf);
    return 0;
}

int svdq_latent_attend(const float *q, long long H, long long KV, long long d, const float *vmu,
                       const unsigned char *c8, const unsigned char *c4, const unsigned char *c2,
                       const unsigned char *c1, long long n8, long long n4, long long n2, long long n1,
                       const unsigned short *scale, const unsigned short *mn, long long nblk, long long B,
                       const unsigned short *kf, long long S, long long nwin, const unsigned char *v, int vtype,
                       long long topk, const float *cos_t, const float *sin_t, long long n_ctx, long long rb,
                       int neox, float *scores, float *out) {
    if (H <= 0 || KV <= 0 || d <= 0 || H % KV || n8 < 0 || n4 < 0 || n2 < 0 || n1 < 0 ||
        n8 + n4 + n2 + n1 > 1024 || B <= 0 || B % 8 || B > 1024 || nblk < 0 || S < 0 || nwin < 0 || topk < 0)
        return -3;
    if (vtype != F16 && vtype != Q8_0 && vtype != Q4_0) return -1;
    if (vtype != F16 && d > 1024) return -3;
    const int64_t vrb = type_row_bytes(vtype, d);            /* bytes of one head's V row */
    if (vrb < 0) return -2;
    const int64_t r = n8 + n4 + n2 + n1, ldq = r + 1, P = nblk * B, T = S + P + nwin;
    if (T <= 0 || rb < 0 || (rb && (rb % 8 || B % rb || d % 2 || !cos_t || !sin_t || S + P > n_ctx))) return -3;
    const int64_t sub = rb ? rb : B;                        /* tokens per query projection */
    const int nt = svdq_get_threads();
    /* one KV head with at most 4 query heads (Gemma's global layers): two rotation blocks' queries
     * are projected together, 8 rows sharing each loaded basis row */
    const int64_t pair = rb && KV == 1 && 2 * H <= 8 ? 2 : 1;
    /* per thread: base (H,), acc (H, B), a (H, r), then rb > 0: R^T q (pair H, d) and its projection (pair H, r+1) */
    const size_t per = (size_t)(H + H * B + H * r + 1 + (rb ? pair * (H * d + H * ldq) : 0));
    float *qp = (float *)malloc((size_t)(H * ldq) * sizeof(float));          /* (H, r+1) latent q | q.mu */
    float *scratch = (float *)malloc((size_t)nt * per * sizeof(float));
    if (!qp || !scratch) { free(qp); free(scratch); return -5; }
    /* (PARALLEL_ROWS names its chunk bounds r0, r1: no locals of those names here) */
    if (!rb) BY_PATH(latent_qproj, q, H, KV, d, vmu, ldq, qp);
    const int64_t nsub = B / sub;                           /* projection units per block */
    const int64_t g = H / KV;
    /* items 0..nblk-1 the packed blocks, item nblk the f16 sinks (rows 0..S of kf) and window (rows
     * S.. of kf, positions S + P ..), so that part runs beside the blocks, not after them */
    PARALLEL_ROWS(nblk + 1, {
        float *acc = scratch + (size_t)thread_id() * per;
        float *qr = acc + H + H * B + H * r + 1;           /* (one declarator per statement: */
        float *qpr = qr + pair * H * d;                     /*  a comma would split the macro) */
        const int64_t b1 = r1 < nblk ? r1 : nblk;
        for (int64_t u = r0 * nsub; u < b1 * nsub; u += pair) {
            const int64_t np = u + pair <= b1 * nsub ? pair : 1;  /* units (b, t0) projected at once */
            if (rb) {   /* relative frame: this rotation block's codes are R(c)^T k, so score R(c)^T q */
                for (int64_t p = 0; p < np; p++) {
                    const int64_t c = S + (u + p) * sub + rb / 2;
                    BY_PATH(unrotate_q, q, H, d, cos_t + c * (d / 2), sin_t + c * (d / 2), neox, qr + p * H * d);
                }
                BY_PATH(latent_qproj, qr, np * H, KV, d, vmu, ldq, qpr);   /* KV 1 when np 2 */
            }
            for (int64_t p = 0; p < np; p++) {
                const float *qb = rb ? qpr + p * H * ldq : qp;
                const int64_t b = (u + p) / nsub;
                const int64_t t0 = (u + p) % nsub * sub;
                BY_PATH(latent_block, c8, c4, c2, c1, n8, n4, n2, n1, scale, mn, b, qb, ldq, qb + r, H, B,
                        t0, t0 + sub, scores + S, T, acc, acc + H + H * B);
            }
        }
        if (r1 > nblk)
            for (int64_t kv = 0; kv < KV; kv++) {
                BY_PATH(qk_group, q + kv * g * d, kf, KV, d, kv, g, 0, S, scores + kv * g * T, T);
                BY_PATH(qk_group, q + kv * g * d, kf + S * KV * d, KV, d, kv, g, 0, nwin, scores + kv * g * T + S + P, T);
            }
    });
    free(qp); free(scratch);
    if (topk > 0 && topk < P) return topk_softmax_av(scores, v, vtype, vrb, 1, H, KV, d, T, S, P, topk, 0, out);
    return softmax_av(scores, v, vtype, vrb, 1, H, KV, d, T, 0, out);
}

/* float -> IEEE half, round to nearest even (numpy's astype(float16)) */
static uint16_t f2h(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));   /* inf, NaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);                                    /* >= 65520: inf */
    if (ax < 0x38800000u) {                                 /* below 2^-14: a subnormal half, m * 2^-24 */
        float af;
        memcpy(&af, &ax, 4);
        return (uint16_t)(sign | (uint32_t)lrintf(af * 16777216.0f));
    }
    uint32_t h = (((ax >> 23) - 112) << 10) | ((ax & 0x7fffffu) >> 13);
    const uint32_t rest = ax & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

/* x (n, k) float32 -> out (n, row bytes) GGML Q8_0 or Q4_0 blocks of 32, value for value what
 * gguf-py's quantize writes (the KV cache's quantized V rows) */
int svdq_quantize_rows(const float *x, long long n, long long k, int T, unsigned char *out) {
    if (T != Q8_0 && T != Q4_0) return -1;
    if (n < 0 || k <= 0 || k % 32) return -3;
    const int64_t rb = type_row_bytes(T, k);
    for (int64_t i = 0; i < n; i++)
        for (int64_t b = 0; b < k / 32; b++) {
            const float *xb = x + i * k + b * 32;
            uint8_t *o = out + i * rb + b * (T == Q8_0 ? 34 : 18);
            float amax = 0.0f, mx = 0.0f;                   /* the largest |x|, and x there (first such) */
            for (int j = 0; j < 32; j++)
                if (fabsf(xb[j]) > amax) { amax = fabsf(xb[j]); mx = xb[j]; }
            const float d = T == Q8_0 ? amax / 127.0f : mx / -8.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            const uint16_t dh = f2h(d);
            o[0] = (uint8_t)(dh & 0xff);
            o[1] = (uint8_t)(dh >> 8);
            if (T == Q8_0) {
                for (int j = 0; j < 32; j++) o[2 + j] = (uint8_t)(int8_t)roundf(xb[j] * id);
            } else {
                uint8_t q[32];
                for (int j = 0; j < 32; j++) {
                    volatile float p = xb[j] * id;          /* no fused multiply-add: gguf-py rounds twice */
                    const int v = (int)(p + 8.5f);
                    q[j] = (uint8_t)(v > 15 ? 15 : v);
                }
                for (int j = 0; j < 16; j++) o[2 + j] = (uint8_t)(q[j] | (q[j + 16] << 4));
            }
        }
    return 0;
}

int svdq_qk_f16(const float *q, const unsigned short *k, long long nq, long long H, long long KV,
                long long d, long long T, float *out) {
    if (nq < 0 || T < 0 || d <= 0 || KV <= 0 || H % KV) return -3;
    PARALLEL_ROWS(T, BY_PATH(qk_rows, q, k, nq, H, KV, d, T, r0, r1, out));
    return 0;
}

static int chunked_sav(float *scores, const uint8_t *v, int vtype, int64_t vrb, int64_t nq, int64_t H, int64_t KV,
                       int64_t d, int64_t T, int kv_major, int64_t nch, const float *q, const uint16_t *k, float *out);

/* a decode query's attention over T f16 keys and values with no mask (a window layer, or an f16
 * cache): per (KV head, token chunk) item the scores, softmax and V sums in one parallel region
 * (flash-decoding: each thread one chunk even with one KV head), then merged. q (H, d) scaled,
 * k, v (T, KV, d), scores (H, T) scratch, out (H, d). */
int svdq_attend_f16(const float *q, const unsigned short *k, const unsigned short *v, long long H, long long KV,
                    long long d, long long T, float *scores, float *out) {
    if (T <= 0 || d <= 0 || KV <= 0 || H <= 0 || H % KV) return -3;
    int64_t nch = (svdq_get_threads() + KV - 1) / KV;       /* chunks per KV head: an item per thread ... */
    if (nch > T / 64) nch = T / 64;                         /* ... of at least 64 tokens */
    return chunked_sav(scores, (const uint8_t *)v, F16, 2 * d, 1, H, KV, d, T, 0, nch < 1 ? 1 : nch, q, k, out);
}

/* per-thread float scratch of the dense decode step (grown, kept) */
static __thread float *dd_buf;
static __thread int64_t dd_cap;

/* A dense f16 cache's decode step in one call: k (KV, d) roped at pos and v (KV, d) stored as f16
 * in row `row` of kc, vc (cap, KV, d), then q (H, d) times scale attends rows lo..row, all visible
 * (svdq_attend_f16). The same ops, in the same order, as the cache's append then attend. scores:
 * (H * (row - lo + 1),) scratch; out (H, d). */
int svdq_dense_decode(const float *q, float scale, const float *k, const float *v, long long H, long long KV,
                      long long d, const float *cos_t, const float *sin_t, long long n_ctx, long long pos, int neox,
                      unsigned short *kc, unsigned short *vc, long long cap, long long row, long long lo,
                      float *scores, float *out) {
    if (H <= 0 || KV <= 0 || d <= 0 || d % 2 || H % KV || row < 0 || row >= cap || lo < 0 || lo > row ||
        pos < 0 || pos >= n_ctx)
        return -3;
    const int64_t need = KV * d + H * d;
    if (need > dd_cap) {
        float *p = (float *)realloc(dd_buf, (size_t)need * sizeof(float));
        if (!p) return -5;
        dd_buf = p; dd_cap = need;
    }
    float *kr = dd_buf, *qs = dd_buf + KV * d;               /* (KV, d) roped k, (H, d) scaled q */
    svdq_rope(k, 1, KV, d, cos_t, sin_t, n_ctx, pos, neox, kr);
    for (int64_t i = 0; i < KV * d; i++) {
        kc[row * KV * d + i] = f2h(kr[i]);
        vc[row * KV * d + i] = f2h(v[i]);
    }
    for (int64_t i = 0; i < H * d; i++) qs[i] = q[i] * scale;
    return svdq_attend_f16(qs, kc + lo * KV * d, vc + lo * KV * d, H, KV, d, row - lo + 1, scores, out);
}

int svdq_softmax_av_f16(float *scores, const unsigned short *v, long long nq, long long H, long long KV,
                        long long d, long long T, float *out) {
    return svdq_softmax_av(scores, (const unsigned char *)v, F16, nq, H, KV, d, T, 0, 0, 0, 0, out);
}

int svdq_softmax_av(float *scores, const unsigned char *v, int vtype, long long nq, long long H, long long KV,
                    long long d, long long T, long long p0, long long n, long long k, int kv_major, float *out) {
    if (nq < 0 || T <= 0 || d <= 0 || KV <= 0 || H <= 0 || H % KV || p0 < 0 || n < 0 || p0 + n > T || k < 0)
        return -3;
    if (vtype != F16 && vtype != Q8_0 && vtype != Q4_0) return -1;
    if (vtype != F16 && d > 1024) return -3;
    const int64_t vrb = type_row_bytes(vtype, d);            /* bytes of one head's V row */
    if (vrb < 0) return -2;
    if (k > 0 && k < n) return topk_softmax_av(scores, v, vtype, vrb, nq, H, KV, d, T, p0, n, k, kv_major != 0, out);
    return softmax_av(scores, v, vtype, vrb, nq, H, KV, d, T, kv_major != 0, out);
}

/* out (nq, H, d) from softmax.V's per-chunk results: items (group, chunk) with acc (items, g, d) and
 * ml (items, 2, g) each chunk's max and sum, merged per head with the factors exp(m_c - M) */
static void merge_chunks(const float *acc, const float *ml, int64_t groups, int64_t nch, int64_t H, int64_t KV,
                         int64_t d, float *out) {
    const int64_t g = H / KV;
    for (int64_t grp = 0; grp < groups; grp++) {
        const int64_t i = grp / KV, kv = grp % KV;
        for (int64_t h = 0; h < g; h++) {
            float M = -INFINITY, L = 0.0f;
            for (int64_t c = 0; c < nch; c++) { const float mc = ml[(grp * nch + c) * g * 2 + h]; M = mc > M ? mc : M; }
            float *o = out + (i * H + kv * g + h) * d;
            for (int64_t e = 0; e < d; e++) o[e] = 0.0f;
            if (M == -INFINITY) continue;                   /* every token masked: zero output */
            for (int64_t c = 0; c < nch; c++) {
                const int64_t it = grp * nch + c;
                const float mc = ml[it * g * 2 + h];
                if (mc == -INFINITY) continue;
                const float f = expf(mc - M);
                L += f * ml[it * g * 2 + g + h];
                const float *a = acc + (it * g + h) * d;
                for (int64_t e = 0; e < d; e++) o[e] += f * a[e];
            }
            const float inv = L > 0.0f ? 1.0f / L : 0.0f;
            for (int64_t e = 0; e < d; e++) o[e] *= inv;
        }
    }
}

/* softmax.V for nq queries over V rows of type vtype (vrb bytes per head row): work items are
 * (query, KV head, token chunk) with chunks of at least 512 tokens, work for every thread */
static int softmax_av(float *scores, const uint8_t *v, int vtype, int64_t vrb, int64_t nq, int64_t H, int64_t KV,
                      int64_t d, int64_t T, int kv_major, float *out) {
    const int64_t groups = nq * KV;
    if (groups == 0) return 0;
    int64_t nch = (4 * svdq_get_threads() + groups - 1) / groups;   /* chunks per group */
    if (nch > T / 512) nch = T / 512;
    return chunked_sav(scores, v, vtype, vrb, nq, H, KV, d, T, kv_major, nch < 1 ? 1 : nch, NULL, NULL, out);
}

/* softmax.V over nch token chunks per (query, KV head) group: each chunk keeps its own max, sum and
 * (g, d) accumulator, merged by merge_chunks. With q (H, d) and f16 keys k (one query: nq = 1, not
 * kv_major), each chunk first scores its tokens into scores (svdq_attend_f16) */
static int chunked_sav(float *scores, const uint8_t *v, int vtype, int64_t vrb, int64_t nq, int64_t H, int64_t KV,
                       int64_t d, int64_t T, int kv_major, int64_t nch, const float *q, const uint16_t *k, float *out) {
    const int64_t g = H / KV, groups = nq * KV;
    const int64_t items = groups * nch;
    float *acc = (float *)malloc((size_t)(items * g * d) * sizeof(float));   /* (items, g, d) */
    float *ml = (float *)malloc((size_t)(items * g * 2) * sizeof(float));    /* (items, 2, g) max, sum */
    int32_t *idx = (int32_t *)malloc((size_t)(groups * T) * sizeof(int32_t)); /* (groups, T) */
    if (!acc || !ml || !idx) { free(acc); free(ml); free(idx); return -5; }
    PARALLEL_ROWS(items, for (int64_t it = r0; it < r1; it++) {
        const int64_t grp = it / nch;           /* (no commas: this is a macro argument) */
        const int64_t c = it % nch;
        const int64_t t0 = T * c / nch;
        const int64_t t1 = T * (c + 1) / nch;
        const int64_t kv = grp % KV;
        const int64_t i = grp / KV;
        float *s = group_rows(scores, i, kv, nq, H, KV, T, kv_major);
        if (q) BY_PATH(qk_group, q + (i * H + kv * g) * d, k, KV, d, kv, g, t0, t1, s, T);
        BY_PATH(sav_chunk, s, g, T, t0, t1, v, vtype, vrb, KV, d, kv, idx + grp * T + t0, acc + it * g * d,
                ml + it * g * 2, ml + it * g * 2 + g);
    });
    merge_chunks(acc, ml, groups, nch, H, KV, d, out);
    free(acc); free(ml); free(idx);
    return 0;
}

/* ---- small per-token ops of the layer graph: plain loops the compiler vectorizes; in C so that a
 * decode step does not pay numpy's per-call overhead several times per layer -------------------- */

/* out (n, d) = x / sqrt(mean(x^2) + eps) * w */
int svdq_rmsnorm(const float *x, const float *w, long long n, long long d, float eps, float *out) {
    if (n < 0 || d <= 0) return -3;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * d;
        float acc[8] = {0};
        int64_t e = 0;
        for (; e + 8 <= d; e += 8)
            for (int j = 0; j < 8; j++) acc[j] += xi[e + j] * xi[e + j];
        float ss = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (; e < d; e++) ss += xi[e] * xi[e];
        const float inv = 1.0f / sqrtf(ss / (float)d + eps);
        for (e = 0; e < d; e++) out[i * d + e] = xi[e] * inv * w[e];
    }
    return 0;
}

/* gated FFN: out (m,) = act(g) * u; act 0 = silu, 1 = gelu (tanh form) */
int svdq_act_mul(const float *g, const float *u, long long m, int act, float *out) {
    if (m < 0 || act < 0 || act > 1) return -3;
    BY_PATH(act_mul, g, u, m, act, out);
    return 0;
}

/* RoPE: x (n, heads, d) at positions pos0.. rotated by the tables cos/sin (n_ctx, d/2) into out;
 * neox rotates the halves (x[i], x[i + d/2]), otherwise adjacent pairs (x[2i], x[2i+1]) */
int svdq_rope(const float *x, long long n, long long heads, long long d, const float *cos_t,
              const float *sin_t, long long n_ctx, long long pos0, int neox, float *out) {
    if (n < 0 || heads <= 0 || d <= 0 || d % 2 || pos0 < 0 || pos0 + n > n_ctx) return -3;
    const int64_t half = d / 2;
    for (int64_t t = 0; t < n; t++) {
        const float *c = cos_t + (pos0 + t) * half, *s = sin_t + (pos0 + t) * half;
        for (int64_t h = 0; h < heads; h++) {
            const float *xi = x + (t * heads + h) * d;
            float *o = out + (t * heads + h) * d;
            if (neox)
                for (int64_t i = 0; i < half; i++) {
                    const float a = xi[i], b = xi[i + half];
                    o[i] = a * c[i] - b * s[i];
                    o[i + half] = a * s[i] + b * c[i];
                }
            else
                for (int64_t i = 0; i < half; i++) {
                    const float a = xi[2 * i], b = xi[2 * i + 1];
                    o[2 * i] = a * c[i] - b * s[i];
                    o[2 * i + 1] = a * s[i] + b * c[i];
                }
        }
    }
    return 0;
}

/* ---- a decode token's layer, composed ---------------------------------------------------------- */

static int layer_check(const svdq_layer *L) {
    const int64_t E = L->n_embd, Q = L->n_head * L->head_dim, KVd = L->n_kv * L->head_dim, F = L->n_ff;
    const int64_t want[7][2] = {{Q, E}, {KVd, E}, {KVd, E}, {E, Q}, {F, E}, {F, E}, {E, F}};   /* (rows, cols) */
    if (E <= 0 || L->n_head <= 0 || L->n_kv <= 0 || L->head_dim <= 0 || L->head_dim % 2 || F <= 0 ||
        L->n_head % L->n_kv || L->act < 0 || L->act > 1 || !L->attn_norm || !L->ffn_norm)
        return -3;
    for (int i = 0; i < 7; i++) {
        if (!L->w[i] || L->rows[i] != want[i][0]) return -3;
        const int e = check(L->types[i], L->rows[i], L->row_bytes[i], want[i][1]);
        if (e) return e;
    }
    return 0;
}

/* the weights i0..i0+nw-1 on the same x (1, k): one call when all are block-quantized */
static int layer_mm(const svdq_layer *L, int i0, int nw, const float *x, long long k, float **out) {
    int quant = 1;
    for (int i = i0; i < i0 + nw; i++) quant &= !float_type(L->types[i]);
    if (quant) return svdq_matmul_multi(nw, (const unsigned char **)L->w + i0, L->rows + i0, L->row_bytes + i0,
                                        L->types + i0, x, 1, k, out);
    for (int i = 0; i < nw; i++) {
        const int e = svdq_matmul(L->w[i0 + i], L->rows[i0 + i], L->row_bytes[i0 + i], L->types[i0 + i], x, 1, k, out[i]);
        if (e) return e;
    }
    return 0;
}

/* x (n_embd,) -> h = norm(x); q (n_head*d) roped at pos, k (n_kv*d) pre-RoPE, v (n_kv*d): biases
 * and per-head q/k norms where the layer has them */
int svdq_layer_attn_in(const svdq_layer *L, const float *x, const float *cos_t, const float *sin_t,
                       long long n_ctx, long long pos, int neox, float *h, float *q, float *k, float *v) {
    int e = layer_check(L);
    if (e) return e;
    const int64_t E = L->n_embd, d = L->head_dim, Q = L->n_head * d, KVd = L->n_kv * d;
    if (pos < 0 || pos >= n_ctx) return -3;
    svdq_rmsnorm(x, L->attn_norm, 1, E, L->eps, h);
    float *qkv[3] = {q, k, v};
    if ((e = layer_mm(L, 0, 3, h, E, qkv))) return e;
    if (L->bq) for (int64_t i = 0; i < Q; i++) q[i] += L->bq[i];
    if (L->bk) for (int64_t i = 0; i < KVd; i++) k[i] += L->bk[i];
    if (L->bv) for (int64_t i = 0; i < KVd; i++) v[i] += L->bv[i];
    if (L->q_norm) svdq_rmsnorm(q, L->q_norm, L->n_head, d, L->eps, q);      /* in place: row by row */
    if (L->k_norm) svdq_rmsnorm(k, L->k_norm, L->n_kv, d, L->eps, k);
    return svdq_rope(q, 1, L->n_head, d, cos_t, sin_t, n_ctx, pos, neox, q);  /* in place: pair by pair */
}

/* x (n_embd,) += post(o @ Wo); x += post(down(act(gate x') * up x')), x' = norm(x).
 * scratch: (2 n_embd + 2 n_ff) floats */
int svdq_layer_ffn(const svdq_layer *L, const float *o, float *x, float *scratch) {
    int e = layer_check(L);
    if (e) return e;
    const int64_t E = L->n_embd, F = L->n_ff;
    float *t = scratch, *h = t + E, *g = h + E, *u = g + F;   /* (E,) (E,) (F,) (F,) */
    if ((e = layer_mm(L, 3, 1, o, L->n_head * L->head_dim, &t))) return e;
    if (L->post_attn_norm) svdq_rmsnorm(t, L->post_attn_norm, 1, E, L->eps, t);
    for (int64_t i = 0; i < E; i++) x[i] += t[i];
    svdq_rmsnorm(x, L->ffn_norm, 1, E, L->eps, h);
    float *gu[2] = {g, u};
    if ((e = layer_mm(L, 4, 2, h, E, gu))) return e;
    svdq_act_mul(g, u, F, L->act, g);
    if ((e = layer_mm(L, 6, 1, g, F, &t))) return e;
    if (L->post_ffn_norm) svdq_rmsnorm(t, L->post_ffn_norm, 1, E, L->eps, t);
    for (int64_t i = 0; i < E; i++) x[i] += t[i];
    return 0;
}

/* Token sparsity on prefill scores s (nq, H, T), in place (svdq_ref.topk_group_mask): per query and
 * KV head group, packed tokens [p0, p0 + n) outside the group's k best become -inf */
int svdq_topk_mask(float *s, long long nq, long long H, long long KV, long long T, long long p0, long long n,
                   long long k) {
    if (nq < 0 || H <= 0 || KV <= 0 || H % KV || T < 0 || p0 < 0 || n < 0 || p0 + n > T || k < 0) return -3;
    if (k == 0 || k >= n) return 0;
    const int64_t g = H / KV;
    const int nt = svdq_get_threads();
    const size_t per = (size_t)(g + 3 * n);                 /* per thread: m (g,), u, w (n,), bins (n,) */
    float *work = (float *)malloc((size_t)nt * per * sizeof(float));
    if (!work) return -5;
    PARALLEL_ROWS(nq * KV, {
        float *m = work + (size_t)thread_id() * per;
        float *u = m + g;
        float *w = u + n;
        int32_t *bins = (int32_t *)(w + n);
        for (int64_t i = r0; i < r1; i++) BY_PATH(topk_mask, s + i * g * T, g, T, p0, n, k, m, u, w, bins);
    });
    free(work);
    return 0;
}

/* W's rows in the decode layout of its type, where there is one: Q5_0 -> Q5_0X4, Q8_0 -> Q8_0X4 (k a
 * multiple of 128; the layout comments above). dst: (rows, row_bytes), the same size. Returns the new type, or
 * a negative code (-1: no repacked layout for this type or k). */
int svdq_repack(const unsigned char *w, long long rows, long long row_bytes, int T, long long k, unsigned char *dst) {
    int e = check(T, rows, row_bytes, k);
    if (e) return e;
    if ((T != Q5_0 && T != Q8_0) || k % 128) return -1;
    const int to = T == Q5_0 ? Q5_0X4 : Q8_0X4;
    for (long long r = 0; r < rows; r++) x4_row(w + r * row_bytes, k / 32, to, 0, dst + r * row_bytes);
    return to;
}
