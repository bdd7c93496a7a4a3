/* Kernel bodies, compiled once per SIMD path (see kernels.c): SFX names the copy, and the
 * surrounding `#pragma GCC target` lets the compiler vectorize for that instruction set. */
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

static inline __attribute__((always_inline)) void FN(decode32)(const uint8_t *row, const int T, int64_t b,
                                                               int8_t *q, float *sm) {
    if (T == Q8_0) {
        const uint8_t *o = row + b * 34;
        float d = h2f(rd16(o));
        for (int l = 0; l < 32; l++) q[l] = (int8_t)o[2 + l];
        sm[0] = sm[1] = d; sm[2] = sm[3] = 0.0f;
    } else if (T == Q4_0 || T == Q4_1) {
        const int nb = T == Q4_0 ? 18 : 20;
        const uint8_t *o = row + b * nb;
        const uint8_t *qs = o + (T == Q4_0 ? 2 : 4);
        const int off = T == Q4_0 ? 8 : 0;
        for (int l = 0; l < 16; l++) { q[l] = (int8_t)((qs[l] & 15) - off); q[l + 16] = (int8_t)((qs[l] >> 4) - off); }
        float d = h2f(rd16(o));
        float m = T == Q4_1 ? h2f(rd16(o + 2)) : 0.0f;
        sm[0] = sm[1] = d; sm[2] = sm[3] = m;
    } else if (T == Q8_0X4) {
        const uint8_t *o = row + (b >> 2) * 136;
        const int i = (int)(b & 3);
        for (int l = 0; l < 32; l++) q[l] = (int8_t)o[32 * i + l];
        sm[0] = sm[1] = h2f(rd16(o + 128 + 2 * i)); sm[2] = sm[3] = 0.0f;
    } else if (T == Q5_0X4) {
        const uint8_t *o = row + (b >> 2) * 88;
        const int i = (int)(b & 3);
        const uint32_t lo = (uint32_t)o[64 + 2 * i] | ((uint32_t)o[65 + 2 * i] << 8);
        const uint32_t hi = (uint32_t)o[72 + 2 * i] | ((uint32_t)o[73 + 2 * i] << 8);
        const uint8_t *qs = o + 16 * i;
        for (int l = 0; l < 16; l++) {
            q[l] = (int8_t)(((qs[l] & 15) | (((lo >> l) & 1) << 4)) - 16);
            q[l + 16] = (int8_t)(((qs[l] >> 4) | (((hi >> l) & 1) << 4)) - 16);
        }
        sm[0] = sm[1] = h2f(rd16(o + 80 + 2 * i)); sm[2] = sm[3] = 0.0f;
    } else if (T == Q5_0 || T == Q5_1) {
        const int nb = T == Q5_0 ? 22 : 24;
        const uint8_t *o = row + b * nb;
        const uint8_t *h = o + (T == Q5_0 ? 2 : 4);
        uint32_t qh = (uint32_t)h[0] | ((uint32_t)h[1] << 8) | ((uint32_t)h[2] << 16) | ((uint32_t)h[3] << 24);
        const uint8_t *qs = h + 4;
        const int off = T == Q5_0 ? 16 : 0;
        for (int l = 0; l < 16; l++) {
            q[l] = (int8_t)(((qs[l] & 15) | (((qh >> l) & 1) << 4)) - off);
            q[l + 16] = (int8_t)(((qs[l] >> 4) | (((qh >> (l + 16)) & 1) << 4)) - off);
        }
        float d = h2f(rd16(o));
        float m = T == Q5_1 ? h2f(rd16(o + 2)) : 0.0f;
        sm[0] = sm[1] = d; sm[2] = sm[3] = m;
    } else if (T == Q4_K || T == Q5_K) {
        const int nb = T == Q4_K ? 144 : 176;
        const uint8_t *o = row + (b >> 3) * nb;
        const int j = (int)(b & 7);
        const uint8_t *sc = o + 4;
        int s, mn;
        scale_min_k4(sc, j, &s, &mn);
        const uint8_t *qs = o + (T == Q4_K ? 16 : 48) + (j >> 1) * 32;
        const int sh = 4 * (j & 1);
        if (T == Q4_K) {
            for (int l = 0; l < 32; l++) q[l] = (int8_t)((qs[l] >> sh) & 15);
        } else {
            const uint8_t *qh = o + 16;
            for (int l = 0; l < 32; l++) q[l] = (int8_t)(((qs[l] >> sh) & 15) | (((qh[l] >> j) & 1) << 4));
        }
        float ds = h2f(rd16(o)) * (float)s, dm = -h2f(rd16(o + 2)) * (float)mn;
        sm[0] = sm[1] = ds; sm[2] = sm[3] = dm;
    } else { /* Q6_K */
        const uint8_t *o = row + (b >> 3) * 210;
        const int j = (int)(b & 7), hh = j >> 2, p = j & 3;
        const uint8_t *ql = o + hh * 64 + ((p & 1) ? 32 : 0);
        const uint8_t *qh = o + 128 + hh * 32;
        const int sh = p >= 2 ? 4 : 0;
        for (int l = 0; l < 32; l++) q[l] = (int8_t)((((ql[l] >> sh) & 15) | (((qh[l] >> (2 * p)) & 3) << 4)) - 32);
        const int8_t *sc = (const int8_t *)(o + 192 + hh * 8 + p * 2);
        float d = h2f(rd16(o + 208));
        sm[0] = d * (float)sc[0]; sm[1] = d * (float)sc[1]; sm[2] = sm[3] = 0.0f;
    }
}

/* rows [r0, r1) of W . all n activations: the hot loop of decode */
static inline __attribute__((always_inline)) void FN(mm_rows)(const uint8_t *w, int64_t row_bytes, const int T,
        const int8_t *xq, const float *xd, const int32_t *xs, int64_t n, int64_t k,
        int64_t r0, int64_t r1, int64_t rows, float *out) {
    const int64_t nb = k / 32;
    int8_t q[32] __attribute__((aligned(32)));
    float sm[4];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *xt = xq + t * k;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                FN(decode32)(row, T, b, q, sm);
                const int8_t *xb = xt + b * 32;
                int32_t i0 = 0, i1 = 0;
                for (int l = 0; l < 16; l++) i0 += (int32_t)q[l] * (int32_t)xb[l];
                for (int l = 16; l < 32; l++) i1 += (int32_t)q[l] * (int32_t)xb[l];
                const int32_t *s = xs + t * (k / 16) + 2 * b;
                acc += xd[t * nb + b] * (sm[0] * (float)i0 + sm[1] * (float)i1 + sm[2] * (float)s[0] + sm[3] * (float)s[1]);
            }
            out[t * rows + r] = acc;
        }
    }
}


#ifdef SIMD_X86
/* AVX2 bodies for the hot weight types (Q8_0, Q5_0, Q4_K, Q6_K): each 32-value sub-block becomes
 * 32 bytes of codes, multiplied with the int8 activation codes by maddubs into 8 int32 lanes
 * (lanes 0-3 cover values 0-15, lanes 4-7 values 16-31), scaled and accumulated in float.
 * Unsigned codes carry their offset as a min term on the activation sums. Q8_0 and Q5_0 go one
 * 32-value block per iteration (mm_rows_simd), Q4_K and Q6_K one superblock (mm_rows_ksimd). */
static inline __m256i FN(bytes_from_bits_32)(const uint8_t *x) {
    uint32_t x32; memcpy(&x32, x, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
    bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL));
    return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

/* 8 int32 lanes, each the dot of 4 unsigned codes a with 4 int8 activation codes x. No int16
 * saturation can occur in the maddubs form (every caller's |pair sum| <= 2 * 128 * 127), so
 * VNNI's one-instruction dpbusd (the avx512 path) gives the same bits. */
static inline __attribute__((always_inline)) __m256i FN(dot4)(__m256i a, __m256i x) {
#ifdef X86_VNNI
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, x);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, x), _mm256_set1_epi16(1));
#endif
}

static inline float FN(hsum8)(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* the 8 horizontal sums of d[0..7], in order: three hadd levels and one cross-lane add */
static inline __m256i FN(hsum8x8_epi32)(const __m256i *d) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(d[0], d[1]), _mm256_hadd_epi32(d[2], d[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(d[4], d[5]), _mm256_hadd_epi32(d[6], d[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* K-quants (Q4_K, Q6_K) a whole 256-value superblock at a time: the 8 sub-block dots stay int32
 * until one hsum8x8, then a few float vector ops give the 8 sub-block terms before their
 * activation scales dx_j (applied by the caller's fma).
 * Q4_K: term_j = d sc_j dot_j - dmin mn_j S_j, S_j the activation code sum of sub-block j.
 * Q6_K: unsigned codes v = q + 32 through maddubs, the int8 16-value scales through madd, and
 * the offset 32 sum_h sc_h S_h per sub-block from the activation sums. */
/* a Q4_K superblock's 8 six-bit scales and mins as floats (ggml's utmp/kmask unpacking) */
static inline void FN(q4k_scales)(const uint8_t *o, __m256 *scf, __m256 *mnf) {
    uint32_t u[4];
    memcpy(u, o + 4, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    const uint32_t mn03 = u[1] & 0x3f3f3f3fu;
    u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    u[2] = mn03;
    u[0] &= 0x3f3f3f3fu;
    const __m128i smv = _mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]);
    *scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(smv));
    *mnf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(smv, 8)));
}

static inline __m256 FN(sb_q4k)(const uint8_t *o, const int8_t *xb, const __m256 sf) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i dot[8];
    for (int g = 0; g < 4; g++) {          /* 32 bytes: low nibbles sub-block 2g, high 2g+1 */
        const __m256i q = _mm256_loadu_si256((const __m256i *)(o + 16 + 32 * g));
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb + 64 * g));
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb + 64 * g + 32));
        dot[2 * g] = FN(dot4)(_mm256_and_si256(q, m4), x0);
        dot[2 * g + 1] = FN(dot4)(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), x1);
    }
    __m256 scf, mnf;
    FN(q4k_scales)(o, &scf, &mnf);
    const __m256 tot = _mm256_cvtepi32_ps(FN(hsum8x8_epi32)(dot));
    __m256 v = _mm256_mul_ps(_mm256_mul_ps(scf, _mm256_set1_ps(_cvtsh_ss(rd16(o)))), tot);
    return _mm256_fnmadd_ps(_mm256_mul_ps(mnf, _mm256_set1_ps(_cvtsh_ss(rd16(o + 2)))), sf, v);
}

static inline __m256 FN(sb_q6k)(const uint8_t *o, const int8_t *xb, const __m256i s16) {
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(o + 192)));  /* 16 scales */
    __m256i dot[8];
    for (int hh = 0; hh < 2; hh++) {       /* 128 values: ql 64 bytes, qh 32 bytes, scales 8 */
        const __m256i sc = _mm256_permute4x64_epi64(sc16, hh ? 0xEE : 0x44);
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(o + hh * 64));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(o + hh * 64 + 32));
        const __m256i h = _mm256_loadu_si256((const __m256i *)(o + 128 + hh * 32));
        __m256i v[4];                      /* sub-block p: ql nibble, qh bits 2p, 2p+1 as bits 4, 5 */
        v[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
        v[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
        v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30));
        v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
        for (int p = 0; p < 4; p++) {      /* scale 2p on values 0-15 (low lane), 2p+1 on 16-31 */
            const __m256i pick = _mm256_set_m128i(_mm_set1_epi16((short)((4 * p + 2) | ((4 * p + 3) << 8))),
                                                  _mm_set1_epi16((short)((4 * p) | ((4 * p + 1) << 8))));
            const __m256i x = _mm256_loadu_si256((const __m256i *)(xb + 128 * hh + 32 * p));
            dot[4 * hh + p] = _mm256_madd_epi16(_mm256_maddubs_epi16(v[p], x), _mm256_shuffle_epi8(sc, pick));
        }
    }
    const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, s16), 5);  /* 32 sum_h sc_h S_h */
    const __m256 tot = _mm256_cvtepi32_ps(_mm256_sub_epi32(FN(hsum8x8_epi32)(dot), off));
    return _mm256_mul_ps(tot, _mm256_set1_ps(_cvtsh_ss(rd16(o + 208))));
}

/* Q4_K / Q6_K rows [r0, r1): one superblock per iteration; its activation scales and sums are
 * loaded as vectors (pairing rows to share them measured no faster). The weights stream from
 * memory once per token: prefetching 6 superblocks ahead measured ~10% faster than the hardware
 * prefetcher alone (a prefetch past the end of w is harmless: it never faults). */
static inline __attribute__((always_inline)) void FN(mm_rows_ksimd)(const uint8_t *w, int64_t row_bytes, const int T,
        const int8_t *xq, const float *xd, const int32_t *xs, int64_t n, int64_t k,
        int64_t r0, int64_t r1, int64_t rows, float *out) {
    const int64_t nsb = k / 256, nbytes = T == Q4_K ? 144 : 210;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *xt = xq + t * k;
            const float *dxt = xd + t * (k / 32);
            const int32_t *st = xs + t * (k / 16);
            __m256 acc = _mm256_setzero_ps();
            for (int64_t i = 0; i < nsb; i++) {
                _mm_prefetch((const char *)(row + (i + 6) * nbytes), _MM_HINT_T0);
                _mm_prefetch((const char *)(row + (i + 6) * nbytes + 64), _MM_HINT_T0);
                _mm_prefetch((const char *)(row + (i + 6) * nbytes + 128), _MM_HINT_T0);
                if (T == Q6_K) _mm_prefetch((const char *)(row + (i + 6) * nbytes + 192), _MM_HINT_T0);
                const __m256 dx = _mm256_loadu_ps(dxt + 8 * i);
                const __m256i s0 = _mm256_loadu_si256((const __m256i *)(st + 16 * i));
                const __m256i s1 = _mm256_loadu_si256((const __m256i *)(st + 16 * i + 8));
                if (T == Q4_K) {           /* per-32 code sums, in order */
                    const __m256 sf = _mm256_cvtepi32_ps(_mm256_permute4x64_epi64(_mm256_hadd_epi32(s0, s1), 0xD8));
                    acc = _mm256_fmadd_ps(FN(sb_q4k)(row + i * nbytes, xt + 256 * i, sf), dx, acc);
                } else {                   /* per-16 code sums as int16 (|S| <= 16 * 127), in order */
                    const __m256i s16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(s0, s1), 0xD8);
                    acc = _mm256_fmadd_ps(FN(sb_q6k)(row + i * nbytes, xt + 256 * i, s16), dx, acc);
                }
            }
            out[t * rows + r] = FN(hsum8)(acc);
        }
    }
}

/* Q8_0 / Q5_0: 8 blocks (256 values) per iteration, then 4, then single blocks for the rest of
 * k. The block dots stay int32 until one hadd reduction gives the 8 (or 4) block sums; their
 * scales dw*dx are one vector (cvtph of the fp16 weight scales, gathered with scalar integer
 * ops to keep the vector ports free, times the activation scales) for a single fma, instead of
 * a cvt, a scalar scale and a serial fma per block. */
static inline __m128i FN(hsum4x8_epi32)(__m256i d0, __m256i d1, __m256i d2, __m256i d3) {
    /* 4x4 transpose by unpacks: lanes [d0 d1 d2 d3 over values 0-15 | over 16-31], then halves */
    const __m256i t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(d0, d1), _mm256_unpackhi_epi32(d0, d1));
    const __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(d2, d3), _mm256_unpackhi_epi32(d2, d3));
    const __m256i h = _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* the fp16 scales of 4 blocks bb bytes apart, packed in one 64-bit integer for cvtph */
static inline uint64_t FN(scales4)(const uint8_t *o, int64_t bb) {
    return (uint64_t)rd16(o) | ((uint64_t)rd16(o + bb) << 16) | ((uint64_t)rd16(o + 2 * bb) << 32) |
           ((uint64_t)rd16(o + 3 * bb) << 48);
}

/* one Q8_0 block: 8 int32 partial dots (signs moved onto x so maddubs sees |w| unsigned) */
static inline __m256i FN(blk_q8_0)(const uint8_t *o, const int8_t *x) {
    const __m256i qw = _mm256_loadu_si256((const __m256i *)(o + 2));
    const __m256i qx = _mm256_loadu_si256((const __m256i *)x);
    return FN(dot4)(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
}

/* one Q5_0 block as unsigned codes q in 0..31 (the nibble, 0x10 where the 5th bit is set):
 * maddubs takes them directly (2 * 31 * 127 fits int16, no sign ops), and the -16 offset is
 * subtracted after the reduction as 16 * the activation code sums */
static inline __m256i FN(blk_q5_0)(const uint8_t *o, const int8_t *x) {
    const __m256i qs = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(o + 6)));
    __m256i q = _mm256_and_si256(_mm256_srlv_epi64(qs, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(15));
    q = _mm256_or_si256(q, _mm256_and_si256(FN(bytes_from_bits_32)(o + 2), _mm256_set1_epi8(16)));
    return FN(dot4)(q, _mm256_loadu_si256((const __m256i *)x));
}

/* one Q8_0 / Q5_0 block's integer dot with its 32 activation codes xb, Q5_0's -16 offset taken
 * off with the block's two 16-value code sums st (the single blocks past the vector loops) */
static inline int32_t FN(blk_isum)(const uint8_t *o, const int8_t *xb, const int32_t *st, const int T) {
    const __m256i d = T == Q8_0 ? FN(blk_q8_0)(o, xb) : FN(blk_q5_0)(o, xb);
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
    s4 = _mm_hadd_epi32(s4, s4);
    const int32_t is = _mm_cvtsi128_si32(_mm_hadd_epi32(s4, s4));
    return T == Q5_0 ? is - 16 * (st[0] + st[1]) : is;
}

#define BLK(j) (T == Q8_0 ? FN(blk_q8_0)(o + (j) * bb, xt + 32 * (b + (j))) : FN(blk_q5_0)(o + (j) * bb, xt + 32 * (b + (j))))
/* rows [r0, r1) of Q8_0 / Q5_0. Prefetch PF bytes ahead in the weight stream (rows are
 * contiguous, so past a row's end it fetches the next row; a prefetch never faults). */
static inline __attribute__((always_inline)) void FN(mm_rows_bsimd)(const uint8_t *w, int64_t row_bytes, const int T,
        const int8_t *xq, const float *xd, const int32_t *xs, int64_t n, int64_t k,
        int64_t r0, int64_t r1, int64_t rows, float *out) {
    enum { PF = 1536 };
    const int64_t nb = k / 32, bb = T == Q8_0 ? 34 : 22;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *xt = xq + t * k;
            const float *dxt = xd + t * nb;
            const int32_t *st = xs + t * (k / 16);
            __m256 acc8 = _mm256_setzero_ps();
            __m128 acc4 = _mm_setzero_ps();
            int64_t b = 0;
            for (; b + 8 <= nb; b += 8) {
                const uint8_t *o = row + b * bb;
                for (int l = 0; l < (T == Q8_0 ? 5 : 3); l++) _mm_prefetch((const char *)(o + PF + 64 * l), _MM_HINT_T0);
                const __m256i d[8] = {BLK(0), BLK(1), BLK(2), BLK(3), BLK(4), BLK(5), BLK(6), BLK(7)};
                __m256i isum = FN(hsum8x8_epi32)(d);
                if (T == Q5_0) {           /* per-block code sums, in order (as for Q4_K) */
                    const __m256i s0 = _mm256_loadu_si256((const __m256i *)(st + 2 * b));
                    const __m256i s1 = _mm256_loadu_si256((const __m256i *)(st + 2 * b + 8));
                    const __m256i sb = _mm256_permute4x64_epi64(_mm256_hadd_epi32(s0, s1), 0xD8);
                    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(sb, 4));
                }
                const __m256 dw = _mm256_cvtph_ps(_mm_set_epi64x((long long)FN(scales4)(o + 4 * bb, bb), (long long)FN(scales4)(o, bb)));
                acc8 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_loadu_ps(dxt + b)), acc8);
            }
            for (; b + 4 <= nb; b += 4) {
                const uint8_t *o = row + b * bb;
                for (int l = 0; l < (T == Q8_0 ? 3 : 2); l++) _mm_prefetch((const char *)(o + PF + 64 * l), _MM_HINT_T0);
                __m128i isum = FN(hsum4x8_epi32)(BLK(0), BLK(1), BLK(2), BLK(3));
                if (T == Q5_0) {
                    const __m128i s = _mm_loadu_si128((const __m128i *)(st + 2 * b));
                    const __m128i s2 = _mm_loadu_si128((const __m128i *)(st + 2 * b + 4));
                    isum = _mm_sub_epi32(isum, _mm_slli_epi32(_mm_hadd_epi32(s, s2), 4));
                }
                const __m128 dw = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)FN(scales4)(o, bb)));
                acc4 = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), _mm_mul_ps(dw, _mm_loadu_ps(dxt + b)), acc4);
            }
            float tail = 0.0f;
            for (; b < nb; b++) {          /* the last k % 128 values: one block at a time */
                const uint8_t *o = row + b * bb;
                tail += (float)FN(blk_isum)(o, xt + 32 * b, st + 2 * b, T) * (_cvtsh_ss(rd16(o)) * dxt[b]);
            }
            acc4 = _mm_add_ps(acc4, _mm_add_ps(_mm256_castps256_ps128(acc8), _mm256_extractf128_ps(acc8, 1)));
            acc4 = _mm_add_ps(acc4, _mm_movehl_ps(acc4, acc4));
            out[t * rows + r] = _mm_cvtss_f32(_mm_add_ss(acc4, _mm_movehdup_ps(acc4))) + tail;
        }
    }
}
#undef BLK

#ifdef X86_VNNI
/* the avx512 copy of mm_rows_bsimd: two blocks per zmm (64 codes for one vpdpbusd against 64
 * contiguous activation codes). Codes are unsigned (Q5_0: nibble | 5th bit 0..31, the high bits a
 * byte mask; Q8_0: w + 128), their offset (16, 128) comes off as OFF sum_b s_b S_b with the block
 * code sums S_b. The lane sums are scaled in float lane by lane (each block's scale s_b = dw dx on
 * its 8 lanes), so no per-block horizontal sums: fewer than half the vector ops of the ymm path. */
static inline __m512i FN(pair512)(const uint8_t *o0, const uint8_t *o1, const int T) {
    if (T == Q8_0)
        return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(o0 + 2))),
                                                   _mm256_loadu_si256((const __m256i *)(o1 + 2)), 1), _mm512_set1_epi8((char)0x80));
    const __m512i qs = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(o0 + 6)))),
                                          _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(o1 + 6))), 1);
    const __m512i q = _mm512_and_si512(_mm512_srlv_epi64(qs, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)), _mm512_set1_epi8(15));
    uint32_t h0, h1;
    memcpy(&h0, o0 + 2, 4);
    memcpy(&h1, o1 + 2, 4);
    return _mm512_mask_add_epi8(q, _cvtu64_mask64((uint64_t)h0 | ((uint64_t)h1 << 32)), q, _mm512_set1_epi8(16));
}

static inline __attribute__((always_inline)) void FN(mm_rows_b512)(const uint8_t *w, int64_t row_bytes, const int T,
        const int8_t *xq, const float *xd, const int32_t *xs, int64_t n, int64_t k,
        int64_t r0, int64_t r1, int64_t rows, float *out) {
    enum { PF = 4096 };   /* bytes ahead: 1536 (the ymm copy's) left Gemma's output matrix ~7% slower */
    const int64_t nb = k / 32, bb = T == Q8_0 ? 34 : 22;
    const float OFF = T == Q8_0 ? 128.0f : 16.0f;
    /* lanes 0-7 take block 2j's scale, 8-15 block 2j+1's: permutes of the 8 block scales */
    const __m512i pick[4] = {_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                             _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
                             _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5),
                             _mm512_setr_epi32(6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7)};
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *xt = xq + t * k;
            const float *dxt = xd + t * nb;
            const int32_t *st = xs + t * (k / 16);
            __m512 acc = _mm512_setzero_ps();
            __m256 off8 = _mm256_setzero_ps();              /* sum_b s_b S_b, per block of 8 */
            float offp = 0.0f, tail = 0.0f;                 /* offp: the pairs' sum_b s_b S_b */
            int64_t b = 0;
            for (; b + 8 <= nb; b += 8) {
                const uint8_t *o = row + b * bb;
                for (int l = 0; l < (T == Q8_0 ? 5 : 3); l++) _mm_prefetch((const char *)(o + PF + 64 * l), _MM_HINT_T0);
                __m512i d[4];
                for (int j = 0; j < 4; j++)
                    d[j] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), FN(pair512)(o + 2 * j * bb, o + (2 * j + 1) * bb, T),
                                               _mm512_loadu_si512((const void *)(xt + 32 * (b + 2 * j))));
                const __m256 s8 = _mm256_mul_ps(_mm256_cvtph_ps(_mm_set_epi64x((long long)FN(scales4)(o + 4 * bb, bb),
                                                                               (long long)FN(scales4)(o, bb))),
                                                _mm256_loadu_ps(dxt + b));
                const __m512 s16 = _mm512_castps256_ps512(s8);
                for (int j = 0; j < 4; j++)
                    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[j]), _mm512_permutexvar_ps(pick[j], s16), acc);
                const __m256i s0 = _mm256_loadu_si256((const __m256i *)(st + 2 * b));
                const __m256i s1 = _mm256_loadu_si256((const __m256i *)(st + 2 * b + 8));
                const __m256i sb = _mm256_permute4x64_epi64(_mm256_hadd_epi32(s0, s1), 0xD8);   /* block code sums */
                off8 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sb), s8, off8);
            }
            for (; b + 2 <= nb; b += 2) {                   /* the last k % 256 values: two blocks at a time */
                const uint8_t *o = row + b * bb;
                const __m512i dd = _mm512_dpbusd_epi32(_mm512_setzero_si512(), FN(pair512)(o, o + bb, T),
                                                       _mm512_loadu_si512((const void *)(xt + 32 * b)));
                const float sa = _cvtsh_ss(rd16(o)) * dxt[b], sb2 = _cvtsh_ss(rd16(o + bb)) * dxt[b + 1];
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dd), _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(sa), _mm512_set1_ps(sb2)), acc);
                offp += (float)(st[2 * b] + st[2 * b + 1]) * sa + (float)(st[2 * b + 2] + st[2 * b + 3]) * sb2;
            }
            if (b < nb) {                                   /* an odd last block */
                const uint8_t *o = row + b * bb;
                tail = (float)FN(blk_isum)(o, xt + 32 * b, st + 2 * b, T) * (_cvtsh_ss(rd16(o)) * dxt[b]);
            }
            out[t * rows + r] = _mm512_reduce_add_ps(acc) - OFF * (FN(hsum8)(off8) + offp) + tail;
        }
    }
}

/* Q4_K / Q6_K rows [r0, r1), n < 4 tokens, a superblock at a time in zmm: each 64-byte load of
 * codes gives two vpdpbusd of 64 values, and their int32 lanes are scaled in float lane by lane
 * (a 16-lane vector of the superblock's scales, permuted to the lanes), so no horizontal sums.
 *   Q6_K: v = code + 32 (0..63, the nibble | two bits of qh shifted per half by vpsllvw/vpsrlvw);
 *         lanes of 16 values share int8 scale sc_h: sum_h d sc_h dx (dot_h - 32 S_h)
 *   Q4_K: nibbles of chunk c are sub-blocks 2c (low) and 2c+1 (high); a zmm of chunks 2g, 2g+1
 *         pairs the low nibbles with activations of sub-blocks 4g and 4g+2, so xq is in that
 *         order (prep_k4) and sdx holds S_j dx_j: sum_j (d sc_j dx_j dot_j - dmin mn_j S_j dx_j)
 * Same value as mm_rows_ksimd up to float summation order. */
static inline __attribute__((always_inline)) void FN(mm_rows_k512)(const uint8_t *w, int64_t row_bytes, const int T,
        const int8_t *xq, const float *xd, const int32_t *xs, const float *sdx, int64_t n, int64_t k,
        int64_t r0, int64_t r1, int64_t rows, float *out) {
    const int64_t nsb = k / 256, nbytes = T == Q4_K ? 144 : 210;
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    const __m512i cnt42 = _mm512_set_epi64(0x0002000200020002LL, 0x0002000200020002LL, 0x0002000200020002LL, 0x0002000200020002LL,
                                           0x0004000400040004LL, 0x0004000400040004LL, 0x0004000400040004LL, 0x0004000400040004LL);
    const __m512i cnt02 = _mm512_set_epi64(0x0002000200020002LL, 0x0002000200020002LL, 0x0002000200020002LL, 0x0002000200020002LL,
                                           0, 0, 0, 0);
    /* lane -> scale index: Q6_K 16-value groups (4 lanes each) 0-3, 4-7, 8-11, 12-15; Q4_K 32-value
     * sub-blocks (8 lanes each) (0, 2), (1, 3), (4, 6), (5, 7) */
    const __m512i pick6[4] = {_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                              _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7),
                              _mm512_setr_epi32(8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11),
                              _mm512_setr_epi32(12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15)};
    const __m512i pick4[4] = {_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2),
                              _mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3),
                              _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6),
                              _mm512_setr_epi32(5, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7, 7, 7)};
    const __m512i half = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *xt = xq + t * k;
            const float *dxt = xd + t * (k / 32);
            const int32_t *st = xs + t * (k / 16);
            __m512 acc = _mm512_setzero_ps(), off = _mm512_setzero_ps();
            for (int64_t i = 0; i < nsb; i++) {
                const uint8_t *o = row + i * nbytes;
                const int8_t *xb = xt + 256 * i;
                for (int l = 0; l < (T == Q4_K ? 3 : 4); l++) _mm_prefetch((const char *)(o + 6 * nbytes + 64 * l), _MM_HINT_T0);
                const __m256 dx = _mm256_loadu_ps(dxt + 8 * i);
                if (T == Q6_K) {
                    __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(o + 192))));
                    f = _mm512_mul_ps(f, _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(rd16(o + 208))),
                                                       _mm512_permutexvar_ps(half, _mm512_castps256_ps512(dx))));
                    off = _mm512_fmadd_ps(f, _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(st + 16 * i))), off);
                    for (int hh = 0; hh < 2; hh++) {
                        const __m512i ql = _mm512_loadu_si512((const void *)(o + 64 * hh));
                        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(o + 128 + 32 * hh)));
                        const __m512i v12 = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi16(qh, cnt42), m30));
                        const __m512i v34 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                                            _mm512_and_si512(_mm512_srlv_epi16(qh, cnt02), m30));
                        const __m512i d12 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v12, _mm512_loadu_si512((const void *)(xb + 128 * hh)));
                        const __m512i d34 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v34, _mm512_loadu_si512((const void *)(xb + 128 * hh + 64)));
                        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d12), _mm512_permutexvar_ps(pick6[2 * hh], f), acc);
                        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d34), _mm512_permutexvar_ps(pick6[2 * hh + 1], f), acc);
                    }
                } else {
                    __m256 scf, mnf;
                    FN(q4k_scales)(o, &scf, &mnf);
                    const __m256 f8 = _mm256_mul_ps(_mm256_mul_ps(scf, _mm256_set1_ps(_cvtsh_ss(rd16(o)))), dx);
                    const __m256 m8 = _mm256_mul_ps(mnf, _mm256_set1_ps(_cvtsh_ss(rd16(o + 2))));
                    off = _mm512_add_ps(off, _mm512_zextps256_ps512(_mm256_mul_ps(m8, _mm256_loadu_ps(sdx + t * (k / 32) + 8 * i))));
                    const __m512 f = _mm512_castps256_ps512(f8);      /* lanes 8-15 never picked */
                    for (int g = 0; g < 2; g++) {
                        const __m512i q = _mm512_loadu_si512((const void *)(o + 16 + 64 * g));
                        const __m512i dl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(q, m4),
                                                               _mm512_loadu_si512((const void *)(xb + 128 * g)));
                        const __m512i dh = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(q, 4), m4),
                                                               _mm512_loadu_si512((const void *)(xb + 128 * g + 64)));
                        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dl), _mm512_permutexvar_ps(pick4[2 * g], f), acc);
                        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dh), _mm512_permutexvar_ps(pick4[2 * g + 1], f), acc);
                    }
                }
            }
            out[t * rows + r] = _mm512_reduce_add_ps(acc) - (T == Q6_K ? 32.0f : 1.0f) * _mm512_reduce_add_ps(off);
        }
    }
}

/* Q8_0X4 rows [r0, r1) (kernels.c: x4_row), n < 4 tokens: a quad of 4 blocks is two
 * 64-byte loads of codes in value order, made unsigned (w + 128) for two vpdpbusd against the
 * activations as they are; lanes 0-7 and 8-15 of each are one block, scaled in float by d dx;
 * the +128 comes off as 128 sum_b d_b dx_b S_b (sf: the blocks' code sums). */
static inline __attribute__((always_inline)) void FN(mm_rows_q8x4)(const uint8_t *w, int64_t row_bytes,
        const int8_t *xq, const float *xd, const float *sf, int64_t n, int64_t k,
        int64_t r0, int64_t r1, int64_t rows, float *out) {
    enum { PF = 4096 };
    const int64_t nq = k / 128;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i p01 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i p23 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *xt = xq + t * k;
            const float *dxt = xd + t * (k / 32), *st = sf + t * (k / 32);
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            __m128 off = _mm_setzero_ps();
            for (int64_t q = 0; q < nq; q++) {
                const uint8_t *o = row + q * 136;
                for (int l = 0; l < 3; l++) _mm_prefetch((const char *)(o + PF + 64 * l), _MM_HINT_T0);
                const __m512i u0 = _mm512_xor_si512(_mm512_loadu_si512((const void *)o), flip);
                const __m512i u1 = _mm512_xor_si512(_mm512_loadu_si512((const void *)(o + 64)), flip);
                const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u0, _mm512_loadu_si512((const void *)(xt + 128 * q)));
                const __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u1, _mm512_loadu_si512((const void *)(xt + 128 * q + 64)));
                const __m128 s4 = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(o + 128))), _mm_loadu_ps(dxt + 4 * q));
                const __m512 s16 = _mm512_castps128_ps512(s4);
                a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_permutexvar_ps(p01, s16), a0);
                a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_permutexvar_ps(p23, s16), a1);
                off = _mm_fmadd_ps(s4, _mm_loadu_ps(st + 4 * q), off);
            }
            off = _mm_add_ps(off, _mm_movehl_ps(off, off));
            out[t * rows + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) - 128.0f * _mm_cvtss_f32(_mm_add_ss(off, _mm_movehdup_ps(off)));
        }
    }
}

/* Q5_0X4 rows [r0, r1) (kernels.c: x4_row), n < 4 tokens: a quad of 4 blocks is one
 * 64-byte nibble load, split into two zmm of codes (values 0-15 and 16-31 of each block) whose
 * fifth bits come from two 64-bit masks, then two vpdpbusd against the activations in the same
 * order (xp) starting from the codes' offset (xb). Lanes 4i..4i+3 hold block i's dot, scaled in
 * float by d_i dx_i. About a third of mm_rows_b512's vector ops per block, which is what held the
 * layer matvecs under the memory's speed. */
static inline __attribute__((always_inline)) void FN(mm_rows_x4)(const uint8_t *w, int64_t row_bytes,
        const int8_t *xp, const float *xd, const int32_t *xb, int64_t n, int64_t k,
        int64_t r0, int64_t r1, int64_t rows, float *out) {
    enum { PF = 4096 };
    const int64_t nq = k / 128;
    const __m512i m4 = _mm512_set1_epi8(15), h16 = _mm512_set1_epi8(16);
    const __m512i pick = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
#define QUAD(qq, ACC) do { \
        const uint8_t *o = row + (qq) * 88; \
        _mm_prefetch((const char *)(o + PF), _MM_HINT_T0); \
        _mm_prefetch((const char *)(o + PF + 64), _MM_HINT_T0); \
        const __m512i c = _mm512_loadu_si512((const void *)o); \
        uint64_t ml, mh; \
        memcpy(&ml, o + 64, 8); memcpy(&mh, o + 72, 8); \
        __m512i lo = _mm512_and_si512(c, m4), hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), m4); \
        lo = _mm512_mask_add_epi8(lo, _cvtu64_mask64(ml), lo, h16); \
        hi = _mm512_mask_add_epi8(hi, _cvtu64_mask64(mh), hi, h16); \
        __m512i d = _mm512_dpbusd_epi32(_mm512_loadu_si512((const void *)(bt + 16 * (qq))), lo, \
                                        _mm512_loadu_si512((const void *)(xt + 128 * (qq)))); \
        d = _mm512_dpbusd_epi32(d, hi, _mm512_loadu_si512((const void *)(xt + 128 * (qq) + 64))); \
        const __m128 s4 = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(o + 80))), _mm_loadu_ps(dxt + 4 * (qq))); \
        ACC = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(s4)), ACC); \
    } while (0)
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *xt = xp + t * k;
            const float *dxt = xd + t * (k / 32);
            const int32_t *bt = xb + t * (k / 8);
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();   /* two chains */
            int64_t q = 0;
            for (; q + 2 <= nq; q += 2) { QUAD(q, a0); QUAD(q + 1, a1); }
            if (q < nq) QUAD(q, a0);
            out[t * rows + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        }
    }
#undef QUAD
}
#endif

/* Prefill tiles: one weight row against nt (4 or TILE_NT) tokens at once. Each 256-value group
 * of the row is unpacked once (8 vectors of 32 codes, as maddubs wants them) and then dotted
 * with every token of the tile, so the unpack, the scale decoding and the weight loads are
 * shared by nt tokens instead of repeated per token. Per token the math and the float order are
 * those of sb_q4k / sb_q6k / mm_rows_bsimd above, so the results are the same bits.
 * xt: the tile's first token's codes (tokens k bytes apart), dxt (k/32 apart), st (k/16 apart);
 * res: (nt,) the row's dots. */
#ifndef TILE_NT
#define TILE_NT 8       /* tokens per tile */
#define TILE_RB 32      /* rows per block */
#endif
/* one K superblock's 256 codes as 8 vectors of 32 unsigned bytes in value order (vector j: values
 * 32j .. 32j+31): Q4_K 0..15, Q6_K 0..63 (the 6-bit code, 32 above the value) */
static inline __attribute__((always_inline)) void FN(q4k_codes)(const uint8_t *o, __m256i *c) {
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int g = 0; g < 4; g++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(o + 16 + 32 * g));
        c[2 * g] = _mm256_and_si256(q, m4);
        c[2 * g + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    }
}

static inline __attribute__((always_inline)) void FN(q6k_codes)(const uint8_t *o, __m256i *c) {
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    for (int hh = 0; hh < 2; hh++) {
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(o + hh * 64));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(o + hh * 64 + 32));
        const __m256i h = _mm256_loadu_si256((const __m256i *)(o + 128 + hh * 32));
        c[4 * hh] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
        c[4 * hh + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
        c[4 * hh + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30));
        c[4 * hh + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
    }
}

static inline __attribute__((always_inline)) void FN(tile_q4k)(const uint8_t *row, const int nt, int64_t k, const int8_t *xt,
        const float *dxt, const int32_t *st, float *res) {
    __m256 acc[TILE_NT];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k / 256; i++) {
        const uint8_t *o = row + i * 144;
        __m256i qb[8];                     /* sub-block j codes 0..15 */
        FN(q4k_codes)(o, qb);
        __m256 scf, mnf;                   /* scales and mins as in sb_q4k */
        FN(q4k_scales)(o, &scf, &mnf);
        const __m256 scd = _mm256_mul_ps(scf, _mm256_set1_ps(_cvtsh_ss(rd16(o))));
        const __m256 mnd = _mm256_mul_ps(mnf, _mm256_set1_ps(_cvtsh_ss(rd16(o + 2))));
        for (int t = 0; t < nt; t++) {
            const int8_t *xb = xt + t * k + 256 * i;
            __m256i dot[8];
            for (int j = 0; j < 8; j++)
                dot[j] = FN(dot4)(qb[j], _mm256_loadu_si256((const __m256i *)(xb + 32 * j)));
            const int32_t *s = st + t * (k / 16) + 16 * i;
            const __m256i s0 = _mm256_loadu_si256((const __m256i *)s), s1 = _mm256_loadu_si256((const __m256i *)(s + 8));
            const __m256 sf = _mm256_cvtepi32_ps(_mm256_permute4x64_epi64(_mm256_hadd_epi32(s0, s1), 0xD8));
            const __m256 v = _mm256_fnmadd_ps(mnd, sf, _mm256_mul_ps(scd, _mm256_cvtepi32_ps(FN(hsum8x8_epi32)(dot))));
            acc[t] = _mm256_fmadd_ps(v, _mm256_loadu_ps(dxt + t * (k / 32) + 8 * i), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) res[t] = FN(hsum8)(acc[t]);
}

static inline __attribute__((always_inline)) void FN(tile_q6k)(const uint8_t *row, const int nt, int64_t k, const int8_t *xt,
        const float *dxt, const int32_t *st, float *res) {
    __m256 acc[TILE_NT];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k / 256; i++) {
        const uint8_t *o = row + i * 210;
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(o + 192)));  /* 16 scales */
        __m256i qb[8], scb[8];             /* sub-block codes 0..63 and their int16 scale pairs */
        FN(q6k_codes)(o, qb);
        for (int hh = 0; hh < 2; hh++) {
            const __m256i sc = _mm256_permute4x64_epi64(sc16, hh ? 0xEE : 0x44);
            for (int p = 0; p < 4; p++) {
                const __m256i pick = _mm256_set_m128i(_mm_set1_epi16((short)((4 * p + 2) | ((4 * p + 3) << 8))),
                                                      _mm_set1_epi16((short)((4 * p) | ((4 * p + 1) << 8))));
                scb[4 * hh + p] = _mm256_shuffle_epi8(sc, pick);
            }
        }
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(rd16(o + 208)));
        for (int t = 0; t < nt; t++) {
            const int8_t *xb = xt + t * k + 256 * i;
            __m256i dot[8];
            for (int j = 0; j < 8; j++)
                dot[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(qb[j], _mm256_loadu_si256((const __m256i *)(xb + 32 * j))), scb[j]);
            const int32_t *s = st + t * (k / 16) + 16 * i;
            const __m256i s0 = _mm256_loadu_si256((const __m256i *)s), s1 = _mm256_loadu_si256((const __m256i *)(s + 8));
            const __m256i s16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(s0, s1), 0xD8);
            const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, s16), 5);
            const __m256 tot = _mm256_cvtepi32_ps(_mm256_sub_epi32(FN(hsum8x8_epi32)(dot), off));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(tot, d), _mm256_loadu_ps(dxt + t * (k / 32) + 8 * i), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) res[t] = FN(hsum8)(acc[t]);
}

/* one Q8_0 / Q5_0 block unpacked for maddubs: a = unsigned codes (|w| for Q8_0, 0..31 for Q5_0),
 * sg = the signs to move onto x (Q8_0 only) */
static inline __attribute__((always_inline)) void FN(unpack_b)(const uint8_t *o, const int T, __m256i *a, __m256i *sg) {
    if (T == Q8_0) {
        const __m256i qw = _mm256_loadu_si256((const __m256i *)(o + 2));
        *a = _mm256_sign_epi8(qw, qw); *sg = qw;
    } else {
        const __m256i qs = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(o + 6)));
        __m256i q = _mm256_and_si256(_mm256_srlv_epi64(qs, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(15));
        *a = _mm256_or_si256(q, _mm256_and_si256(FN(bytes_from_bits_32)(o + 2), _mm256_set1_epi8(16)));
        *sg = *a;
    }
}

static inline __attribute__((always_inline)) __m256i FN(dot_b)(const int T, __m256i a, __m256i sg, const int8_t *x) {
    __m256i qx = _mm256_loadu_si256((const __m256i *)x);
    if (T == Q8_0) qx = _mm256_sign_epi8(qx, sg);
    return FN(dot4)(a, qx);
}

static inline __attribute__((always_inline)) void FN(tile_b)(const uint8_t *row, const int T, const int nt, int64_t k, const int8_t *xt,
        const float *dxt, const int32_t *st, float *res) {
    const int64_t nb = k / 32, bb = T == Q8_0 ? 34 : 22;
    __m256 acc8[TILE_NT];
    __m128 acc4[TILE_NT];
    float tail[TILE_NT];
    for (int t = 0; t < nt; t++) { acc8[t] = _mm256_setzero_ps(); acc4[t] = _mm_setzero_ps(); tail[t] = 0.0f; }
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        const uint8_t *o = row + b * bb;
        __m256i a[8], sg[8];
        for (int j = 0; j < 8; j++) FN(unpack_b)(o + j * bb, T, &a[j], &sg[j]);
        const __m256 dw = _mm256_cvtph_ps(_mm_set_epi64x((long long)FN(scales4)(o + 4 * bb, bb), (long long)FN(scales4)(o, bb)));
        for (int t = 0; t < nt; t++) {
            const int8_t *xb = xt + t * k + 32 * b;
            __m256i d[8];
            for (int j = 0; j < 8; j++) d[j] = FN(dot_b)(T, a[j], sg[j], xb + 32 * j);
            __m256i isum = FN(hsum8x8_epi32)(d);
            if (T == Q5_0) {
                const int32_t *s = st + t * (k / 16) + 2 * b;
                const __m256i s0 = _mm256_loadu_si256((const __m256i *)s), s1 = _mm256_loadu_si256((const __m256i *)(s + 8));
                isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(_mm256_permute4x64_epi64(_mm256_hadd_epi32(s0, s1), 0xD8), 4));
            }
            acc8[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_loadu_ps(dxt + t * nb + b)), acc8[t]);
        }
    }
    for (; b + 4 <= nb; b += 4) {
        const uint8_t *o = row + b * bb;
        __m256i a[4], sg[4];
        for (int j = 0; j < 4; j++) FN(unpack_b)(o + j * bb, T, &a[j], &sg[j]);
        const __m128 dw = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)FN(scales4)(o, bb)));
        for (int t = 0; t < nt; t++) {
            const int8_t *xb = xt + t * k + 32 * b;
            __m128i isum = FN(hsum4x8_epi32)(FN(dot_b)(T, a[0], sg[0], xb), FN(dot_b)(T, a[1], sg[1], xb + 32),
                                             FN(dot_b)(T, a[2], sg[2], xb + 64), FN(dot_b)(T, a[3], sg[3], xb + 96));
            if (T == Q5_0) {
                const int32_t *s = st + t * (k / 16) + 2 * b;
                isum = _mm_sub_epi32(isum, _mm_slli_epi32(_mm_hadd_epi32(_mm_loadu_si128((const __m128i *)s),
                                                                         _mm_loadu_si128((const __m128i *)(s + 4))), 4));
            }
            acc4[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), _mm_mul_ps(dw, _mm_loadu_ps(dxt + t * nb + b)), acc4[t]);
        }
    }
    for (; b < nb; b++) {                  /* the last k % 128 values: one block at a time */
        const uint8_t *o = row + b * bb;
        __m256i a, sg;
        FN(unpack_b)(o, T, &a, &sg);
        const float dw = _cvtsh_ss(rd16(o));
        for (int t = 0; t < nt; t++) {
            const __m256i d = FN(dot_b)(T, a, sg, xt + t * k + 32 * b);
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
            s4 = _mm_hadd_epi32(s4, s4);
            int32_t is = _mm_cvtsi128_si32(_mm_hadd_epi32(s4, s4));
            if (T == Q5_0) is -= 16 * (st[t * (k / 16) + 2 * b] + st[t * (k / 16) + 2 * b + 1]);
            tail[t] += (float)is * (dw * dxt[t * nb + b]);
        }
    }
    for (int t = 0; t < nt; t++) {
        __m128 s = _mm_add_ps(acc4[t], _mm_add_ps(_mm256_castps256_ps128(acc8[t]), _mm256_extractf128_ps(acc8[t], 1)));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        res[t] = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s))) + tail[t];
    }
}

/* Prefill GEMM for Q5_0, Q4_K, Q6_K (and Q8_0 where VNNI has no int16 pair sums to overflow):
 * GR rows at a time (8 per ymm on avx2, 16 per zmm on avx512), their codes first rearranged into
 * units of 32 values, (k/32, 8 groups, GR rows, 4 codes) unsigned bytes, so one vector holds 4
 * consecutive codes of each row. A token's 4 activation codes of a group are broadcast and the dot
 * instructions leave the GR rows' unit dots in the int32 lanes: no horizontal sums, whose cost is
 * what holds the per-row tiles above back. Per unit and row two float factors finish the dot:
 *   Q5_0 / Q8_0: A = d, M = OFF d (codes q + 16, w + 128);  Q4_K: A = d sc_j, M = dmin m_j;
 *   term = dx (A dot - M S), S the unit's activation code sum, dx its activation scale;
 *   Q6_K (two 16-value scales per unit, codes q + 32): A0, A1 = d sc, M = 32 A, dots of groups 0-3
 *   and 4-7 apart, each against its 16 values' code sum.
 * Float sums run unit by unit (the tiles sum in int32 first): the same value up to rounding.
 * Used from GEMM_MIN_N tokens, where the rearrangement (once per GR rows) is cheap. */
#define GEMM_MIN_N 16
#define GEMM_NT 4       /* tokens sharing each loaded code vector */

/* the 8 rows' 32 codes c[r] (value j at byte j) -> g[0..7]: vector q holds dword q (values
 * 4q .. 4q+3) of every row: an 8x8 transpose of dwords */
static inline __attribute__((always_inline)) void FN(transpose8x8_epi32)(const __m256i *c, __m256i *g) {
    const __m256i a0 = _mm256_unpacklo_epi32(c[0], c[1]), a1 = _mm256_unpackhi_epi32(c[0], c[1]);
    const __m256i a2 = _mm256_unpacklo_epi32(c[2], c[3]), a3 = _mm256_unpackhi_epi32(c[2], c[3]);
    const __m256i a4 = _mm256_unpacklo_epi32(c[4], c[5]), a5 = _mm256_unpackhi_epi32(c[4], c[5]);
    const __m256i a6 = _mm256_unpacklo_epi32(c[6], c[7]), a7 = _mm256_unpackhi_epi32(c[6], c[7]);
    const __m256i b0 = _mm256_unpacklo_epi64(a0, a2), b1 = _mm256_unpackhi_epi64(a0, a2);
    const __m256i b2 = _mm256_unpacklo_epi64(a1, a3), b3 = _mm256_unpackhi_epi64(a1, a3);
    const __m256i b4 = _mm256_unpacklo_epi64(a4, a6), b5 = _mm256_unpackhi_epi64(a4, a6);
    const __m256i b6 = _mm256_unpacklo_epi64(a5, a7), b7 = _mm256_unpackhi_epi64(a5, a7);
    g[0] = _mm256_permute2x128_si256(b0, b4, 0x20); g[4] = _mm256_permute2x128_si256(b0, b4, 0x31);
    g[1] = _mm256_permute2x128_si256(b1, b5, 0x20); g[5] = _mm256_permute2x128_si256(b1, b5, 0x31);
    g[2] = _mm256_permute2x128_si256(b2, b6, 0x20); g[6] = _mm256_permute2x128_si256(b2, b6, 0x31);
    g[3] = _mm256_permute2x128_si256(b3, b7, 0x20); g[7] = _mm256_permute2x128_si256(b3, b7, 0x31);
}

/* one row's codes of its units [u0, u0 + 8) (one K superblock, or 8 blocks of Q5_0 / Q8_0) as 32
 * unsigned bytes each, and the units' factors: A, M (and A1 for Q6_K; M = 32 A there) */
static inline __attribute__((always_inline)) void FN(gemm_unpack8)(const uint8_t *row, const int T, int64_t u0,
        int nu, __m256i *c, float *A, float *M, float *A1) {
    if (T == Q4_K || T == Q6_K) {
        const uint8_t *o = row + (u0 / 8) * (T == Q4_K ? 144 : 210);
        if (T == Q4_K) {
            FN(q4k_codes)(o, c);
            __m256 scf, mnf;
            FN(q4k_scales)(o, &scf, &mnf);
            _mm256_storeu_ps(A, _mm256_mul_ps(scf, _mm256_set1_ps(_cvtsh_ss(rd16(o)))));
            _mm256_storeu_ps(M, _mm256_mul_ps(mnf, _mm256_set1_ps(_cvtsh_ss(rd16(o + 2)))));
        } else {
            FN(q6k_codes)(o, c);
            const float d = _cvtsh_ss(rd16(o + 208));
            for (int u = 0; u < 8; u++) {
                A[u] = d * (float)(int8_t)o[192 + 2 * u];
                A1[u] = d * (float)(int8_t)o[192 + 2 * u + 1];
            }
        }
        return;
    }
    const int64_t bb = T == Q8_0 ? 34 : 22;
    for (int u = 0; u < nu; u++) {
        const uint8_t *o = row + (u0 + u) * bb;
        if (T == Q8_0) c[u] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(o + 2)), _mm256_set1_epi8((char)0x80));
        else { __m256i sg; FN(unpack_b)(o, T, &c[u], &sg); }
        A[u] = _cvtsh_ss(rd16(o));
        M[u] = (T == Q8_0 ? 128.0f : 16.0f) * A[u];
    }
}

#ifdef X86_VNNI
/* the avx512 copy: 16 rows per zmm (two 8-row transposes side by side), dpbusd on 512 bits */
#define GR 16
#define vgi __m512i
#define vgf __m512
#define VG_DOT(acc, a, x) _mm512_dpbusd_epi32(acc, a, x)
#define VG_SET1I _mm512_set1_epi32
#define VG_SET1F _mm512_set1_ps
#define VG_ZEROI _mm512_setzero_si512
#define VG_ZEROF _mm512_setzero_ps
#define VG_LOADI(p) _mm512_load_si512(p)
#define VG_LOADF _mm512_loadu_ps
#define VG_STOREF _mm512_storeu_ps
#define VG_CVT _mm512_cvtepi32_ps
#define VG_FMA _mm512_fmadd_ps
#define VG_FNMA _mm512_fnmadd_ps
#define VG_MUL _mm512_mul_ps
#define GEMM_TYPE(T) ((T) == Q5_0 || (T) == Q8_0 || (T) == Q4_K || (T) == Q6_K)
#else
#define GR 8
#define vgi __m256i
#define vgf __m256
#define VG_DOT(acc, a, x) _mm256_add_epi32(acc, FN(dot4)(a, x))
#define VG_SET1I _mm256_set1_epi32
#define VG_SET1F _mm256_set1_ps
#define VG_ZEROI _mm256_setzero_si256
#define VG_ZEROF _mm256_setzero_ps
#define VG_LOADI(p) _mm256_load_si256(p)
#define VG_LOADF _mm256_loadu_ps
#define VG_STOREF _mm256_storeu_ps
#define VG_CVT _mm256_cvtepi32_ps
#define VG_FMA _mm256_fmadd_ps
#define VG_FNMA _mm256_fnmadd_ps
#define VG_MUL _mm256_mul_ps
#define GEMM_TYPE(T) ((T) == Q5_0 || (T) == Q4_K || (T) == Q6_K)
#endif

/* rows [r0, r0 + GR) against all n tokens. Scratch: pk (k/32, 8, GR, 4) bytes, fa (k/32, 3, GR)
 * floats: A, M, A1 per unit */
static inline __attribute__((always_inline)) void FN(gemm_group)(const uint8_t *w, int64_t row_bytes, const int T,
        const int8_t *xq, const float *xd, const int32_t *xs, int64_t n, int64_t k, int64_t r0,
        int64_t rows, float *out, __m256i *pk, float *fa) {
    const int64_t nu = k / 32;
    const int q6 = T == Q6_K;
    for (int64_t u0 = 0; u0 < nu; u0 += 8) {
        const int nuu = nu - u0 < 8 ? (int)(nu - u0) : 8;
        for (int h = 0; h < GR / 8; h++) {
            __m256i c[8][8];                /* (8 rows, 8 units) codes */
            float A[8][8], M[8][8], A1[8][8];
            for (int r = 0; r < 8; r++)
                FN(gemm_unpack8)(w + (r0 + 8 * h + r) * row_bytes, T, u0, nuu, c[r], A[r], M[r], A1[r]);
            for (int u = 0; u < nuu; u++) {
                __m256i cu[8], g[8];
                for (int r = 0; r < 8; r++) cu[r] = c[r][u];
                FN(transpose8x8_epi32)(cu, g);
                /* unit u0+u: (8 groups, GR rows, 4) bytes; this half's 8 rows at byte 32 h */
                uint8_t *dst = (uint8_t *)pk + (u0 + u) * 8 * GR * 4 + 32 * h;
                for (int q = 0; q < 8; q++) _mm256_storeu_si256((__m256i *)(dst + q * GR * 4), g[q]);
                float *f = fa + (u0 + u) * 3 * GR + 8 * h;
                for (int r = 0; r < 8; r++) {
                    f[r] = A[r][u];
                    f[GR + r] = q6 ? 32.0f * A[r][u] : M[r][u];
                    f[2 * GR + r] = q6 ? A1[r][u] : 0.0f;
                }
            }
        }
    }
    for (int64_t t0 = 0; t0 < n; t0 += GEMM_NT) {
        const int nt = n - t0 < GEMM_NT ? (int)(n - t0) : GEMM_NT;
        vgf acc[GEMM_NT];
        for (int j = 0; j < GEMM_NT; j++) acc[j] = VG_ZEROF();
        for (int64_t u = 0; u < nu; u++) {
            const vgi *g = (const vgi *)((const uint8_t *)pk + u * 8 * GR * 4);
            const float *f = fa + u * 3 * GR;
            vgi is0[GEMM_NT], is1[GEMM_NT];
            for (int j = 0; j < GEMM_NT; j++) { is0[j] = VG_ZEROI(); is1[j] = VG_ZEROI(); }
            for (int q = 0; q < 8; q++) {
                const vgi gq = VG_LOADI(g + q);
                for (int j = 0; j < nt; j++) {
                    int32_t x4;
                    memcpy(&x4, xq + (t0 + j) * k + 32 * u + 4 * q, 4);
                    if (q6 && q >= 4) is1[j] = VG_DOT(is1[j], gq, VG_SET1I(x4));
                    else is0[j] = VG_DOT(is0[j], gq, VG_SET1I(x4));
                }
            }
            const vgf A = VG_LOADF(f), M = VG_LOADF(f + GR);
            for (int j = 0; j < nt; j++) {
                const int64_t t = t0 + j;
                const float dx = xd[t * nu + u];
                const int32_t *s = xs + t * (k / 16) + 2 * u;       /* the unit's two 16-value code sums */
                if (q6) {
                    const vgf A1 = VG_LOADF(f + 2 * GR);
                    vgf v = VG_MUL(VG_CVT(is0[j]), A);
                    v = VG_FMA(VG_CVT(is1[j]), A1, v);
                    v = VG_FNMA(M, VG_SET1F((float)s[0]), v);
                    v = VG_FNMA(VG_MUL(A1, VG_SET1F(32.0f)), VG_SET1F((float)s[1]), v);
                    acc[j] = VG_FMA(v, VG_SET1F(dx), acc[j]);
                } else {
                    acc[j] = VG_FMA(VG_CVT(is0[j]), VG_MUL(A, VG_SET1F(dx)), acc[j]);
                    acc[j] = VG_FNMA(M, VG_SET1F((float)(s[0] + s[1]) * dx), acc[j]);
                }
            }
        }
        for (int j = 0; j < nt; j++) VG_STOREF(out + (t0 + j) * rows + r0, acc[j]);
    }
}

/* rows [r0, r1) by the GEMM in GR-row groups (scratch from the heap: prefill only, about 2 GR bytes
 * per k per call), the rest by the tiles; 0 when the scratch cannot be had */
static int FN(mm_rows_gemm)(const uint8_t *w, int64_t row_bytes, const int T, const int8_t *xq,
        const float *xd, const int32_t *xs, int64_t n, int64_t k, int64_t r0, int64_t r1, int64_t rows, float *out);

/* prefill, n >= 4: rows in blocks of TILE_RB, and within a block every tile of TILE_NT tokens
 * against every row, so the block's weights stay in L2 (and each row in L1) while TILE_NT tokens
 * reuse them; then one tile of 4 tokens, and the last n % 4 tokens through the per-token kernels.
 * 8 tokens measured faster than 4 (Q5_0's unpack is shared by more tokens), 32 rows than 4 or 16. */
#define TILE_ROW(NT) do { \
    if (T == Q4_K) FN(tile_q4k)(w + r * row_bytes, NT, k, xt, dxt, st, res); \
    else if (T == Q6_K) FN(tile_q6k)(w + r * row_bytes, NT, k, xt, dxt, st, res); \
    else FN(tile_b)(w + r * row_bytes, T, NT, k, xt, dxt, st, res); \
    for (int j = 0; j < NT; j++) out[(t + j) * rows + r] = res[j]; } while (0)
static inline __attribute__((always_inline)) void FN(mm_rows_tiled)(const uint8_t *w, int64_t row_bytes, const int T,
        const int8_t *xq, const float *xd, const int32_t *xs, int64_t n, int64_t k,
        int64_t r0, int64_t r1, int64_t rows, float *out) {
    const int64_t n8 = n / TILE_NT * TILE_NT, n4 = n / 4 * 4;
    for (int64_t a = r0; a < r1; a += TILE_RB) {
        const int64_t a1 = a + TILE_RB < r1 ? a + TILE_RB : r1;
        for (int64_t t = 0; t < n4; t += t < n8 ? TILE_NT : 4) {
            const int8_t *xt = xq + t * k;                   /* the tile's codes (nt, k) */
            const float *dxt = xd + t * (k / 32);            /* (nt, k/32) scales */
            const int32_t *st = xs + t * (k / 16);           /* (nt, k/16) code sums */
            float res[TILE_NT];                              /* (nt,) one row against the tile */
            if (t < n8) for (int64_t r = a; r < a1; r++) TILE_ROW(TILE_NT);
            else for (int64_t r = a; r < a1; r++) TILE_ROW(4);
        }
    }
    if (n4 < n) {
        if (T == Q4_K || T == Q6_K)
            FN(mm_rows_ksimd)(w, row_bytes, T, xq + n4 * k, xd + n4 * (k / 32), xs + n4 * (k / 16), n - n4, k, r0, r1, rows, out + n4 * rows);
        else
            FN(mm_rows_bsimd)(w, row_bytes, T, xq + n4 * k, xd + n4 * (k / 32), xs + n4 * (k / 16), n - n4, k, r0, r1, rows, out + n4 * rows);
    }
}
#undef TILE_ROW

static int FN(mm_rows_gemm)(const uint8_t *w, int64_t row_bytes, const int T, const int8_t *xq,
        const float *xd, const int32_t *xs, int64_t n, int64_t k, int64_t r0, int64_t r1, int64_t rows, float *out) {
    const int64_t nu = k / 32, rg = r0 + (r1 - r0) / GR * GR;
    __m256i *pk = aligned_alloc(64, (size_t)nu * 8 * GR * 4);           /* (k/32, 8, GR, 4) codes */
    float *fa = malloc((size_t)nu * 3 * GR * sizeof(float));            /* (k/32, 3, GR) factors */
    if (!pk || !fa) { free(pk); free(fa); return 0; }
    /* one copy per type: a constant T takes the type tests out of the inner loops */
#define GEMM_ALL(TT) for (int64_t r = r0; r < rg; r += GR) FN(gemm_group)(w, row_bytes, TT, xq, xd, xs, n, k, r, rows, out, pk, fa)
    switch (T) {
    case Q4_K: GEMM_ALL(Q4_K); break;
    case Q6_K: GEMM_ALL(Q6_K); break;
    case Q8_0: GEMM_ALL(Q8_0); break;
    default:   GEMM_ALL(Q5_0); break;
    }
#undef GEMM_ALL
    free(pk);
    free(fa);
    if (rg < r1) FN(mm_rows_tiled)(w, row_bytes, T, xq, xd, xs, n, k, rg, r1, rows, out);
    return 1;
}

static inline __attribute__((always_inline)) void FN(mm_rows_simd)(const uint8_t *w, int64_t row_bytes, const int T,
        const int8_t *xq, const float *xd, const int32_t *xs, int64_t n, int64_t k,
        int64_t r0, int64_t r1, int64_t rows, float *out) {
    if (n >= GEMM_MIN_N && GEMM_TYPE(T) && r1 - r0 >= GR && FN(mm_rows_gemm)(w, row_bytes, T, xq, xd, xs, n, k, r0, r1, rows, out)) return;
    if (n >= 4) FN(mm_rows_tiled)(w, row_bytes, T, xq, xd, xs, n, k, r0, r1, rows, out);
#ifdef X86_VNNI
    else if (T == Q6_K) FN(mm_rows_k512)(w, row_bytes, T, xq, xd, xs, NULL, n, k, r0, r1, rows, out);
    else if (T == Q4_K) FN(mm_rows_ksimd)(w, row_bytes, T, xq, xd, xs, n, k, r0, r1, rows, out);  /* no reordered codes here */
    else FN(mm_rows_b512)(w, row_bytes, T, xq, xd, xs, n, k, r0, r1, rows, out);
#else
    else if (T == Q4_K || T == Q6_K) FN(mm_rows_ksimd)(w, row_bytes, T, xq, xd, xs, n, k, r0, r1, rows, out);
    else FN(mm_rows_bsimd)(w, row_bytes, T, xq, xd, xs, n, k, r0, r1, rows, out);
#endif
}
#define MM_FAST(TT) FN(mm_rows_simd)(w, rb, TT, xq, xd, xs, n, k, r0, r1, rows, out)
#elif defined(SIMD_NEON)
/* aarch64: explicit NEON bodies (matvec, f16 dot/axpy) live in their own header */
#include "kernels_neon.h"
#define MM_FAST(TT) FN(mm_rows_neon)(w, rb, TT, xq, xd, xs, n, k, r0, r1, rows, out)
#else
#define MM_FAST(TT) FN(mm_rows)(w, rb, TT, xq, xd, xs, n, k, r0, r1, rows, out)
#endif

#define MM_TYPE(TT) \
static void FN(mm_##TT)(const uint8_t *w, int64_t rb, const int8_t *xq, const float *xd, const int32_t *xs, \
                        int64_t n, int64_t k, int64_t r0, int64_t r1, int64_t rows, float *out) { \
    FN(mm_rows)(w, rb, TT, xq, xd, xs, n, k, r0, r1, rows, out); }
#define MM_TYPE_FAST(TT) \
static void FN(mm_##TT)(const uint8_t *w, int64_t rb, const int8_t *xq, const float *xd, const int32_t *xs, \
                        int64_t n, int64_t k, int64_t r0, int64_t r1, int64_t rows, float *out) { MM_FAST(TT); }
MM_TYPE(Q4_0) MM_TYPE(Q4_1) MM_TYPE_FAST(Q5_0) MM_TYPE(Q5_1) MM_TYPE_FAST(Q8_0) MM_TYPE_FAST(Q4_K) MM_TYPE(Q5_K) MM_TYPE_FAST(Q6_K)
#undef MM_TYPE
#undef MM_TYPE_FAST
#undef MM_FAST
#ifdef GR
#undef GR
#undef vgi
#undef vgf
#undef GEMM_TYPE
#undef VG_DOT
#undef VG_SET1I
#undef VG_SET1F
#undef VG_ZEROI
#undef VG_ZEROF
#undef VG_LOADI
#undef VG_LOADF
#undef VG_STOREF
#undef VG_CVT
#undef VG_FMA
#undef VG_FNMA
#undef VG_MUL
#endif

/* Q5_0X4 / Q8_0X4 where this path has no kernel for them (and for n >= 4 tokens): up to X4_CHUNK
 * rows at a time un-repacked into the thread's scratch and run as Q5_0 / Q8_0; 0, or -5 when the
 * scratch cannot be had */
#define X4_CHUNK 64
static int FN(mm_x4_rows)(const uint8_t *w, int64_t rb, const int T, const int8_t *xq, const float *xd, const int32_t *xs,
                          int64_t n, int64_t k, int64_t r0, int64_t r1, int64_t rows, float *out) {
    uint8_t *tmp = x4_scratch(X4_CHUNK * rb);                    /* (X4_CHUNK, rb) plain rows */
    if (!tmp) return -5;
    for (int64_t a = r0; a < r1; a += X4_CHUNK) {
        const int64_t m = r1 - a < X4_CHUNK ? r1 - a : X4_CHUNK;
        for (int64_t r = 0; r < m; r++) x4_row(w + (a + r) * rb, k / 32, T, 1, tmp + r * rb);
        if (T == Q5_0X4) FN(mm_Q5_0)(tmp, rb, xq, xd, xs, n, k, 0, m, rows, out + a);
        else FN(mm_Q8_0)(tmp, rb, xq, xd, xs, n, k, 0, m, rows, out + a);
    }
    return 0;
}

/* rows [r0, r1) of W (type T) . the n quantized activations xa (and their reordered copies for
 * the Q5_0X4 and avx512 Q4_K kernels). 0, or -5 (no scratch) */
static int FN(mm_dispatch)(const uint8_t *w, int64_t rb, int T, const xacts *xa, int64_t n, int64_t k,
                           int64_t r0, int64_t r1, int64_t rows, float *out) {
    const int8_t *xq = xa->q;
    const float *xd = xa->d;
    const int32_t *xs = xa->s;
    switch (T) {
    case Q5_0X4:
#ifdef X86_VNNI
        if (n < 4) { FN(mm_rows_x4)(w, rb, xa->p, xd, xa->b, n, k, r0, r1, rows, out); break; }
#endif
        return FN(mm_x4_rows)(w, rb, T, xq, xd, xs, n, k, r0, r1, rows, out);
    case Q8_0X4:
#ifdef X86_VNNI
        if (n < 4 && xa->sf) { FN(mm_rows_q8x4)(w, rb, xq, xd, xa->sf, n, k, r0, r1, rows, out); break; }
#endif
        return FN(mm_x4_rows)(w, rb, T, xq, xd, xs, n, k, r0, r1, rows, out);
    case Q4_0: FN(mm_Q4_0)(w, rb, xq, xd, xs, n, k, r0, r1, rows, out); break;
    case Q4_1: FN(mm_Q4_1)(w, rb, xq, xd, xs, n, k, r0, r1, rows, out); break;
    case Q5_0: FN(mm_Q5_0)(w, rb, xq, xd, xs, n, k, r0, r1, rows, out); break;
    case Q5_1: FN(mm_Q5_1)(w, rb, xq, xd, xs, n, k, r0, r1, rows, out); break;
    case Q8_0: FN(mm_Q8_0)(w, rb, xq, xd, xs, n, k, r0, r1, rows, out); break;
    case Q4_K:
#ifdef X86_VNNI
        if (n < 4 && xa->k4) { FN(mm_rows_k512)(w, rb, T, xa->k4, xd, xs, xa->sdx, n, k, r0, r1, rows, out); break; }
#endif
        FN(mm_Q4_K)(w, rb, xq, xd, xs, n, k, r0, r1, rows, out); break;
    case Q5_K: FN(mm_Q5_K)(w, rb, xq, xd, xs, n, k, r0, r1, rows, out); break;
    default:   FN(mm_Q6_K)(w, rb, xq, xd, xs, n, k, r0, r1, rows, out); break;
    }
    return 0;
}

static void FN(mm_float_rows)(const uint8_t *w, int64_t rb, int T, const float *x, int64_t n, int64_t k,
                              int64_t r0, int64_t r1, int64_t rows, float *out) {
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + r * rb;
        for (int64_t t = 0; t < n; t++) {
            const float *xt = x + t * k;
            float acc = 0.0f;
            if (T == F32) { const float *f = (const float *)row; for (int64_t i = 0; i < k; i++) acc += f[i] * xt[i]; }
            else if (T == F16) { const uint16_t *h = (const uint16_t *)row; for (int64_t i = 0; i < k; i++) acc += h2f(h[i]) * xt[i]; }
            else { const uint16_t *h = (const uint16_t *)row; for (int64_t i = 0; i < k; i++) acc += bf2f(h[i]) * xt[i]; }
            out[t * rows + r] = acc;
        }
    }
}

static void FN(quantize_q8)(const float *x, int64_t n, int64_t k, int8_t *xq, float *xd, int32_t *xs) {
    for (int64_t t = 0; t < n; t++)
        for (int64_t b = 0; b < k / 32; b++) {
            const float *v = x + t * k + b * 32;
            float amax = 0.0f;
            for (int l = 0; l < 32; l++) { float a = fabsf(v[l]); amax = a > amax ? a : amax; }
            float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
            int32_t s0 = 0, s1 = 0;
            int8_t *o = xq + t * k + b * 32;
            for (int l = 0; l < 32; l++) {
                int32_t qv = (int32_t)nearbyintf(v[l] * inv);
                o[l] = (int8_t)qv;
                if (l < 16) s0 += qv; else s1 += qv;
            }
            xd[t * (k / 32) + b] = d;
            xs[t * (k / 16) + 2 * b] = s0;
            xs[t * (k / 16) + 2 * b + 1] = s1;
        }
}

static void FN(dequant_rows)(const uint8_t *w, int64_t rb, int T, int64_t k, int64_t r0, int64_t r1, float *out) {
    int8_t q[32];
    float sm[4];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + r * rb;
        float *o = out + (r - r0) * k;
        if (T == F32) { memcpy(o, row, (size_t)k * 4); continue; }
        if (T == F16) { const uint16_t *h = (const uint16_t *)row; for (int64_t i = 0; i < k; i++) o[i] = h2f(h[i]); continue; }
        if (T == BF16) { const uint16_t *h = (const uint16_t *)row; for (int64_t i = 0; i < k; i++) o[i] = bf2f(h[i]); continue; }
        for (int64_t b = 0; b < k / 32; b++) {
            FN(decode32)(row, T, b, q, sm);
            for (int l = 0; l < 32; l++) {
                int h = l >= 16;
                float v = sm[h] * (float)q[l];
                if (sm[2 + h] != 0.0f) v += sm[2 + h];
                o[b * 32 + l] = v;
            }
        }
    }
}

#include "kernels_attn.h"

#undef FN
