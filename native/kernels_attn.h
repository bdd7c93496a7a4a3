/* Attention kernels, included by kernels_impl.h once per SIMD path (FN names the copy):
 *   latent_block  packed latent-K scores of one block of B tokens for m projected queries;
 *   qk_rows       q.k over f16 keys;
 *   sav_chunk     softmax.V over f16 values for one KV head's g query heads and one token range;
 *   sav_topk      the same over the packed tokens a decode query's KV head group ranks best.
 * Decode splits the tokens into chunks (flash-decoding): each chunk keeps its own max, sum and
 * (g, d) accumulator, and svdq_softmax_av_f16 merges them, so every thread has work even when a
 * layer has one KV head, and each V row is read once for all g heads that share it. */

/* ---- packed latent-K scores ------------------------------------------------------------------ */

/* a (m, r) = qt * scale of block b; base (m) = qt . mn (the minimum's share of every score) plus
 * bias (m, stride ldq; NULL: none). qt rows are ldq floats apart. */
static inline void FN(latent_prep)(const float *qt, int64_t ldq, const float *bias, int64_t m, int64_t r,
                                   const uint16_t *scale, const uint16_t *mn, int64_t b, float *a, float *base) {
#ifdef SIMD_X86
    /* F16C: the block's r scales and minima converted 8 at a time once, then per query a
     * vector multiply and a dot (a software h2f per element and query cost more than scoring) */
    float sf[1024], mf[1024];
    int64_t j = 0;
    for (; j + 8 <= r; j += 8) {
        _mm256_storeu_ps(sf + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scale + b * r + j))));
        _mm256_storeu_ps(mf + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + b * r + j))));
    }
    for (; j < r; j++) { sf[j] = _cvtsh_ss(scale[b * r + j]); mf[j] = _cvtsh_ss(mn[b * r + j]); }
    for (int64_t i = 0; i < m; i++) {
        const float *qi = qt + i * ldq;
        __m256 acc = _mm256_setzero_ps();
        for (j = 0; j + 8 <= r; j += 8) {
            const __m256 q8 = _mm256_loadu_ps(qi + j);
            _mm256_storeu_ps(a + i * r + j, _mm256_mul_ps(q8, _mm256_loadu_ps(sf + j)));
            acc = _mm256_fmadd_ps(q8, _mm256_loadu_ps(mf + j), acc);
        }
        float sum = FN(hsum8)(acc);
        for (; j < r; j++) { a[i * r + j] = qi[j] * sf[j]; sum += qi[j] * mf[j]; }
        base[i] = sum + (bias ? bias[i * ldq] : 0.0f);
    }
#else
    for (int64_t i = 0; i < m; i++) {
        const float *qi = qt + i * ldq;
        float s = bias ? bias[i * ldq] : 0.0f;
        for (int64_t j = 0; j < r; j++) { a[i * r + j] = qi[j] * h2f(scale[b * r + j]); s += qi[j] * h2f(mn[b * r + j]); }
        base[i] = s;
    }
#endif
}

#ifdef SIMD_X86
/* NP (<= 8) heads of one KV group x 8 basis columns from j: accumulators in registers, each row
 * of the basis loaded once for the NP heads */
static inline __attribute__((always_inline)) void FN(qproj_tile)(const float *vm, int64_t r1, int64_t d,
        const float *qh, int64_t j, const int NP, float *o) {
    /* columns j.. j+8 that exist: the last tile of a row is masked, nothing past r1 is touched */
    const int64_t left = r1 - j;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 8 ? left : 8)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 acc[8];
    for (int i = 0; i < NP; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t e = 0; e < d; e++) {
        const __m256 row = _mm256_maskload_ps(vm + e * r1 + j, mask);
        for (int i = 0; i < NP; i++) acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(qh + i * d + e), row, acc[i]);
    }
    for (int i = 0; i < NP; i++) _mm256_maskstore_ps(o + i * r1 + j, mask, acc[i]);
}
#endif

#ifdef X86_VNNI
/* the avx512 copy: NP heads x 48 columns from j (three zmm per head, masked past r1): per basis row
 * 3 loads and NP broadcasts feed 3 NP fmas of 16 lanes, up to 24 independent accumulators (the ymm
 * tile: 1 load, NP fmas of 8). 48 columns: 3 tiles cover Gemma's r + 1 = 137-138 with little masked */
#define QPROJ_COLS 48
static inline __attribute__((always_inline)) void FN(qproj_tile48)(const float *vm, int64_t r1, int64_t d,
        const float *qh, int64_t j, const int NP, float *o) {
    const int64_t left = r1 - j;
    __mmask16 m[3];
    for (int c = 0; c < 3; c++) {
        const int64_t lc = left - 16 * c;
        m[c] = lc >= 16 ? 0xFFFF : lc <= 0 ? 0 : (__mmask16)((1u << lc) - 1);
    }
    __m512 a0[8], a1[8], a2[8];
    for (int i = 0; i < NP; i++) { a0[i] = _mm512_setzero_ps(); a1[i] = _mm512_setzero_ps(); a2[i] = _mm512_setzero_ps(); }
    for (int64_t e = 0; e < d; e++) {
        const float *row = vm + e * r1 + j;
        const __m512 row0 = _mm512_maskz_loadu_ps(m[0], row);
        const __m512 row1 = _mm512_maskz_loadu_ps(m[1], row + 16);
        const __m512 row2 = _mm512_maskz_loadu_ps(m[2], row + 32);
        for (int i = 0; i < NP; i++) {
            const __m512 x = _mm512_set1_ps(qh[i * d + e]);
            a0[i] = _mm512_fmadd_ps(x, row0, a0[i]);
            a1[i] = _mm512_fmadd_ps(x, row1, a1[i]);
            a2[i] = _mm512_fmadd_ps(x, row2, a2[i]);
        }
    }
    for (int i = 0; i < NP; i++) {
        _mm512_mask_storeu_ps(o + i * r1 + j, m[0], a0[i]);
        _mm512_mask_storeu_ps(o + i * r1 + j + 16, m[1], a1[i]);
        _mm512_mask_storeu_ps(o + i * r1 + j + 32, m[2], a2[i]);
    }
}
#define QPROJ_TILE FN(qproj_tile48)
#else
#define QPROJ_COLS 8
#define QPROJ_TILE FN(qproj_tile)
#endif

/* q (H, d) rotated back by the RoPE angles of one position (cos/sin rows (d/2,)): R^T q, neox
 * halves or adjacent pairs. The relative frame scores a rotation block with its centre's R^T q (once
 * per block) */
static void FN(unrotate_q)(const float *q, int64_t H, int64_t d, const float *c, const float *s, int neox, float *out) {
    const int64_t h2 = d / 2;
    for (int64_t h = 0; h < H; h++) {
        const float *x = q + h * d;
        float *o = out + h * d;
        if (neox)                                           /* two loops: each vectorizes */
            for (int64_t e = 0; e < h2; e++) {
                const float a = x[e], b = x[e + h2];
                o[e] = a * c[e] + b * s[e];
                o[e + h2] = b * c[e] - a * s[e];
            }
        else
            for (int64_t e = 0; e < h2; e++) {
                const float a = x[2 * e], b = x[2 * e + 1];
                o[2 * e] = a * c[e] + b * s[e];
                o[2 * e + 1] = b * c[e] - a * s[e];
            }
    }
}

/* Decode queries projected onto a per-layer basis: qp (H, r1) = q_h . vmu[kv(h)], where vmu
 * (KV, d, r1) holds each KV head's d rows of the basis V (r columns) and of the mean (last
 * column), so qp[:, :r] are the latent queries and qp[:, r] = q.mu. x86: register tiles of up to
 * 8 heads x 8 columns (the relative frame runs this once per rotation block); the column tail and
 * other paths in plain C. */
static void FN(latent_qproj)(const float *q, int64_t H, int64_t KV, int64_t d, const float *vmu, int64_t r1,
                             float *qp) {
    const int64_t g = H / KV;
    int64_t j0 = 0;                                         /* columns done by the tiles */
#ifdef SIMD_X86
    j0 = r1;
    for (int64_t h0 = 0; h0 < H; h0 += 8) {
        const int64_t kv = h0 / g, np0 = (kv + 1) * g - h0;    /* heads left in this KV group */
        const int64_t np = np0 < 8 ? np0 : 8;
        const float *vm = vmu + kv * d * r1;
        for (int64_t j = 0; j < j0; j += QPROJ_COLS) {
            switch (np) {
            case 1: QPROJ_TILE(vm, r1, d, q + h0 * d, j, 1, qp + h0 * r1); break;
            case 2: QPROJ_TILE(vm, r1, d, q + h0 * d, j, 2, qp + h0 * r1); break;
            case 3: QPROJ_TILE(vm, r1, d, q + h0 * d, j, 3, qp + h0 * r1); break;
            case 4: QPROJ_TILE(vm, r1, d, q + h0 * d, j, 4, qp + h0 * r1); break;
            case 5: QPROJ_TILE(vm, r1, d, q + h0 * d, j, 5, qp + h0 * r1); break;
            case 6: QPROJ_TILE(vm, r1, d, q + h0 * d, j, 6, qp + h0 * r1); break;
            case 7: QPROJ_TILE(vm, r1, d, q + h0 * d, j, 7, qp + h0 * r1); break;
            default: QPROJ_TILE(vm, r1, d, q + h0 * d, j, 8, qp + h0 * r1); break;
            }
        }
        h0 += np - 8;                                       /* next tile starts at h0 + np */
    }
#endif
    for (int64_t h = 0; h < H; h++) {
        float *o = qp + h * r1;
        const float *vm = vmu + (h / g) * d * r1;
        for (int64_t j = j0; j < r1; j++) o[j] = 0.0f;
        for (int64_t e = 0; e < d; e++) {
            const float x = q[h * d + e];
            const float *row = vm + e * r1;
            for (int64_t j = j0; j < r1; j++) o[j] += x * row[j];
        }
    }
}
#ifdef QPROJ_TILE
#undef QPROJ_TILE
#undef QPROJ_COLS
#endif

#ifdef SIMD_X86
/* the codes of 8 consecutive tokens (t8*8 ..) of one channel row p, as floats. Token t sits at
 * bits w*t (w = 4, 2, 1), so the 8 tokens are the w bytes at t8*w: 1 and 2 bits by table lookup
 * per byte, 4 bits as one word shifted per lane */
static inline __m256 FN(codes8)(const uint8_t *p, const int w, int64_t t8) {
    if (w == 8) return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + t8 * 8))));
    if (w == 1) return _mm256_load_ps(LUT1[p[t8]]);         /* byte -> 8 floats: one load */
    if (w == 2) return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_load_ps(LUT2[p[2 * t8]])),
                                            _mm_load_ps(LUT2[p[2 * t8 + 1]]), 1);
    uint32_t x = 0;
    memcpy(&x, p + t8 * w, (size_t)w);
    const __m256i sh = _mm256_mullo_epi32(_mm256_set1_epi32(w), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i v = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)x), sh), _mm256_set1_epi32((1 << w) - 1));
    return _mm256_cvtepi32_ps(v);
}

/* NP (<= 8) queries x 8 tokens, accumulators in registers, channels streamed in width order */
#define LATENT_WIDTH(W_, CW, NW)                                                                   \
    for (int64_t c = 0; c < NW; c++, j++) {                                                        \
        const __m256 x = FN(codes8)(CW + (b * NW + c) * (B * W_ / 8), W_, t8);                     \
        for (int i = 0; i < NP; i++) acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + i * r + j), x, acc[i]); \
    }
static inline __attribute__((always_inline)) void FN(latent_tile)(const uint8_t *c8, const uint8_t *c4,
        const uint8_t *c2, const uint8_t *c1, int64_t n8, int64_t n4, int64_t n2, int64_t n1,
        int64_t b, int64_t B, int64_t t8, const float *a, int64_t r, const float *base, const int NP,
        float *out, int64_t ostride) {
    __m256 acc[8];
    for (int i = 0; i < NP; i++) acc[i] = _mm256_set1_ps(base[i]);
    int64_t j = 0;
    LATENT_WIDTH(8, c8, n8) LATENT_WIDTH(4, c4, n4) LATENT_WIDTH(2, c2, n2) LATENT_WIDTH(1, c1, n1)
    for (int i = 0; i < NP; i++) _mm256_storeu_ps(out + i * ostride + t8 * 8, acc[i]);
}
#undef LATENT_WIDTH
#endif

#ifdef X86_VNNI
/* the avx512 copy: the codes of 16 consecutive tokens from token t (a multiple of 8) of one channel
 * row p as floats: the w*16 bits broadcast, each lane shifted to its token's bits and masked */
static inline __m512 FN(codes16)(const uint8_t *p, const int w, int64_t t) {
    if (w == 8) return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + t))));
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512i v, sh;
    if (w == 4) {                                           /* tokens 0-7 in the low word, 8-15 in the high */
        uint32_t x[2];
        memcpy(x, p + t / 2, 8);
        v = _mm512_inserti64x4(_mm512_set1_epi32((int)x[0]), _mm256_set1_epi32((int)x[1]), 1);
        sh = _mm512_slli_epi32(_mm512_and_si512(lane, _mm512_set1_epi32(7)), 2);
    } else {
        uint32_t x = 0;
        memcpy(&x, p + t * w / 8, (size_t)(2 * w));
        v = _mm512_set1_epi32((int)x);
        sh = _mm512_mullo_epi32(lane, _mm512_set1_epi32(w));
    }
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(v, sh), _mm512_set1_epi32((1 << w) - 1)));
}

#define LATENT_WIDTH16(W_, CW, NW)                                                                 \
    for (int64_t c = 0; c < NW; c++, j++) {                                                        \
        const __m512 x = FN(codes16)(CW + (b * NW + c) * (B * W_ / 8), W_, t);                      \
        for (int i = 0; i < NP; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i * r + j]), x, acc[i]); \
    }
/* NP (<= 8) queries x 16 tokens from t: latent_tile with 16 lanes (the same sums in the same order) */
static inline __attribute__((always_inline)) void FN(latent_tile16)(const uint8_t *c8, const uint8_t *c4,
        const uint8_t *c2, const uint8_t *c1, int64_t n8, int64_t n4, int64_t n2, int64_t n1,
        int64_t b, int64_t B, int64_t t, const float *a, int64_t r, const float *base, const int NP,
        float *out, int64_t ostride) {
    __m512 acc[8];
    for (int i = 0; i < NP; i++) acc[i] = _mm512_set1_ps(base[i]);
    int64_t j = 0;
    LATENT_WIDTH16(8, c8, n8) LATENT_WIDTH16(4, c4, n4) LATENT_WIDTH16(2, c2, n2) LATENT_WIDTH16(1, c1, n1)
    for (int i = 0; i < NP; i++) _mm512_storeu_ps(out + i * ostride + t, acc[i]);
}
#undef LATENT_WIDTH16
#endif

/* One packed block b of B tokens scored for m projected queries, tokens t0..t1 of the block (multiples
 * of 8): out_i[t] = base_i + sum_j (qt_ij scale_j) code_j[t]. x86: register tiles of 8 tokens x up to
 * 8 queries; elsewhere each channel's codes are unpacked once into floats and shared by the m
 * queries (an axpy). Query rows are ldq floats apart, output rows ostride (column b*B + t);
 * acc: scratch (m, B) floats; a: (m, r). */
static void FN(latent_block)(const uint8_t *c8, const uint8_t *c4, const uint8_t *c2, const uint8_t *c1,
                             int64_t n8, int64_t n4, int64_t n2, int64_t n1, const uint16_t *scale,
                             const uint16_t *mn, int64_t b, const float *qt, int64_t ldq, const float *bias,
                             int64_t m, int64_t B, int64_t t0, int64_t t1, float *out, int64_t ostride,
                             float *acc, float *a) {
    const int64_t r = n8 + n4 + n2 + n1;
    float *base = acc;                                      /* (m,) in the scratch's first row */
    FN(latent_prep)(qt, ldq, bias, m, r, scale, mn, b, a, base);
#ifdef SIMD_X86
    for (int64_t i0 = 0; i0 < m; i0 += 8) {
        const int64_t np = m - i0 < 8 ? m - i0 : 8;
        float *o = out + i0 * ostride + b * B;
        int64_t t8 = t0 / 8;
#ifdef X86_VNNI
        for (; t8 + 2 <= t1 / 8; t8 += 2) {
            switch (np) {
            case 1: FN(latent_tile16)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, 8 * t8, a + i0 * r, r, base + i0, 1, o, ostride); break;
            case 2: FN(latent_tile16)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, 8 * t8, a + i0 * r, r, base + i0, 2, o, ostride); break;
            case 3: FN(latent_tile16)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, 8 * t8, a + i0 * r, r, base + i0, 3, o, ostride); break;
            case 4: FN(latent_tile16)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, 8 * t8, a + i0 * r, r, base + i0, 4, o, ostride); break;
            case 5: FN(latent_tile16)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, 8 * t8, a + i0 * r, r, base + i0, 5, o, ostride); break;
            case 6: FN(latent_tile16)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, 8 * t8, a + i0 * r, r, base + i0, 6, o, ostride); break;
            case 7: FN(latent_tile16)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, 8 * t8, a + i0 * r, r, base + i0, 7, o, ostride); break;
            default: FN(latent_tile16)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, 8 * t8, a + i0 * r, r, base + i0, 8, o, ostride); break;
            }
        }
#endif
        for (; t8 < t1 / 8; t8++) {
            switch (np) {   /* a constant NP lets the compiler keep the accumulators in registers */
            case 1: FN(latent_tile)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, t8, a + i0 * r, r, base + i0, 1, o, ostride); break;
            case 2: FN(latent_tile)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, t8, a + i0 * r, r, base + i0, 2, o, ostride); break;
            case 3: FN(latent_tile)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, t8, a + i0 * r, r, base + i0, 3, o, ostride); break;
            case 4: FN(latent_tile)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, t8, a + i0 * r, r, base + i0, 4, o, ostride); break;
            case 5: FN(latent_tile)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, t8, a + i0 * r, r, base + i0, 5, o, ostride); break;
            case 6: FN(latent_tile)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, t8, a + i0 * r, r, base + i0, 6, o, ostride); break;
            case 7: FN(latent_tile)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, t8, a + i0 * r, r, base + i0, 7, o, ostride); break;
            default: FN(latent_tile)(c8, c4, c2, c1, n8, n4, n2, n1, b, B, t8, a + i0 * r, r, base + i0, 8, o, ostride); break;
            }
        }
    }
#else
    float code[1024];
    float *ac = acc + m;                                    /* (m, B) after base */
    for (int64_t i = 0; i < m; i++)
        for (int64_t t = t0; t < t1; t++) ac[i * B + t] = base[i];
    int64_t j = 0;
    for (int64_t c = 0; c < r; c++, j++) {
        /* unpack channel j's B codes once */
        if (c < n8) { const uint8_t *p = c8 + (b * n8 + c) * B;
            for (int64_t t = 0; t < B; t++) code[t] = (float)p[t]; }
        else if (c < n8 + n4) { const uint8_t *p = c4 + (b * n4 + (c - n8)) * (B / 2);
            for (int64_t t = 0; t < B / 2; t++) { code[2 * t] = (float)(p[t] & 15); code[2 * t + 1] = (float)(p[t] >> 4); } }
        else if (c < n8 + n4 + n2) { const uint8_t *p = c2 + (b * n2 + (c - n8 - n4)) * (B / 4);
            for (int64_t t = 0; t < B / 4; t++) { uint8_t v = p[t];
                code[4 * t] = (float)(v & 3); code[4 * t + 1] = (float)((v >> 2) & 3);
                code[4 * t + 2] = (float)((v >> 4) & 3); code[4 * t + 3] = (float)(v >> 6); } }
        else { const uint8_t *p = c1 + (b * n1 + (c - n8 - n4 - n2)) * (B / 8);
            for (int64_t t = 0; t < B; t++) code[t] = (float)((p[t >> 3] >> (t & 7)) & 1); }
        for (int64_t i = 0; i < m; i++) {
            const float aj = a[i * r + j];
            float *o = ac + i * B;
            for (int64_t t = t0; t < t1; t++) o[t] += aj * code[t];
        }
    }
    for (int64_t i = 0; i < m; i++)
        memcpy(out + i * ostride + b * B + t0, ac + i * B + t0, (size_t)(t1 - t0) * sizeof(float));
#endif
}

/* ---- attention over f16 keys / values (GQA: head h reads KV head h / (H / KV)) ---------------- */

static float FN(dot_f16)(const float *q, const uint16_t *k, int64_t d) {
#ifdef SIMD_X86
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= d; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i))), acc);
    float s = FN(hsum8)(acc);
    for (; i < d; i++) s += q[i] * h2f(k[i]);
    return s;
#elif defined(SIMD_NEON)
    return FN(dot_f16_neon)(q, k, d);
#else
    float s = 0.0f;
    for (int64_t i = 0; i < d; i++) s += q[i] * h2f(k[i]);
    return s;
#endif
}

static void FN(axpy_f16)(float a, const uint16_t *v, float *o, int64_t d) {
#ifdef SIMD_X86
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= d; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(av, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i))), _mm256_loadu_ps(o + i)));
    for (; i < d; i++) o[i] += a * h2f(v[i]);
#elif defined(SIMD_NEON)
    FN(axpy_f16_neon)(a, v, o, d);
#else
    for (int64_t i = 0; i < d; i++) o[i] += a * h2f(v[i]);
#endif
}

static void FN(qk_rows)(const float *q, const uint16_t *k, int64_t nq, int64_t H, int64_t KV, int64_t d,
                        int64_t T, int64_t t0, int64_t t1, float *out) {
    const int64_t g = H / KV;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t i = 0; i < nq; i++)
            for (int64_t h = 0; h < H; h++)
                out[(i * H + h) * T + t] = FN(dot_f16)(q + (i * H + h) * d, k + (t * KV + h / g) * d, d);
}

/* the g query heads q (g, d) of KV head kv against f16 keys t0..t1 (k: (T, KV, d) rows) -> s (g
 * rows, stride T). x86: each key row converted once for the g heads, one accumulator per head
 * (qk_rows converts it per head and ran 3x slower on a window layer's 4 heads) */
#ifdef SIMD_X86
static inline __attribute__((always_inline)) void FN(qk_group_tile)(const float *q, const uint16_t *k, int64_t KV,
        int64_t d, int64_t kv, const int G, int64_t t0, int64_t t1, float *s, int64_t T) {
    for (int64_t t = t0; t < t1; t++) {
        const uint16_t *kr = k + (t * KV + kv) * d;
        __m256 acc[8];
        for (int h = 0; h < G; h++) acc[h] = _mm256_setzero_ps();
        for (int64_t e = 0; e < d; e += 8) {
            const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kr + e)));
            for (int h = 0; h < G; h++) acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * d + e), x, acc[h]);
        }
        for (int h = 0; h < G; h++) s[h * T + t] = FN(hsum8)(acc[h]);
    }
}

#ifdef X86_VNNI
/* the avx512 copy: 16 values per step, one zmm accumulator per head */
static inline __attribute__((always_inline)) void FN(qk_group_tile16)(const float *q, const uint16_t *k, int64_t KV,
        int64_t d, int64_t kv, const int G, int64_t t0, int64_t t1, float *s, int64_t T) {
    for (int64_t t = t0; t < t1; t++) {
        const uint16_t *kr = k + (t * KV + kv) * d;
        __m512 acc[8];
        for (int h = 0; h < G; h++) acc[h] = _mm512_setzero_ps();
        for (int64_t e = 0; e < d; e += 16) {
            const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kr + e)));
            for (int h = 0; h < G; h++) acc[h] = _mm512_fmadd_ps(_mm512_loadu_ps(q + h * d + e), x, acc[h]);
        }
        for (int h = 0; h < G; h++) s[h * T + t] = _mm512_reduce_add_ps(acc[h]);
    }
}
#define QK_TILE FN(qk_group_tile16)
#define QK_STEP 16
#else
#define QK_TILE FN(qk_group_tile)
#define QK_STEP 8
#endif
#endif

static void FN(qk_group)(const float *q, const uint16_t *k, int64_t KV, int64_t d, int64_t kv, int64_t g,
                         int64_t t0, int64_t t1, float *s, int64_t T) {
#ifdef SIMD_X86
    if (d % QK_STEP == 0 && g <= 8) {
        switch (g) {   /* a constant G keeps the accumulators in registers */
        case 1: QK_TILE(q, k, KV, d, kv, 1, t0, t1, s, T); return;
        case 2: QK_TILE(q, k, KV, d, kv, 2, t0, t1, s, T); return;
        case 3: QK_TILE(q, k, KV, d, kv, 3, t0, t1, s, T); return;
        case 4: QK_TILE(q, k, KV, d, kv, 4, t0, t1, s, T); return;
        case 5: QK_TILE(q, k, KV, d, kv, 5, t0, t1, s, T); return;
        case 6: QK_TILE(q, k, KV, d, kv, 6, t0, t1, s, T); return;
        case 7: QK_TILE(q, k, KV, d, kv, 7, t0, t1, s, T); return;
        default: QK_TILE(q, k, KV, d, kv, 8, t0, t1, s, T); return;
        }
    }
#endif
    for (int64_t t = t0; t < t1; t++)
        for (int64_t h = 0; h < g; h++) s[h * T + t] = FN(dot_f16)(q + h * d, k + (t * KV + kv) * d, d);
}
#ifdef SIMD_X86
#undef QK_TILE
#undef QK_STEP
#endif

static void FN(act_mul_tail)(const float *g, const float *u, int64_t i0, int64_t m, int act, float *out) {
    for (int64_t i = i0; i < m; i++) {
        const float x = g[i];
        out[i] = (act == 0 ? x / (1.0f + expf(-x))
                           : 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)))) * u[i];
    }
}
#ifndef SIMD_X86
static void FN(act_mul)(const float *g, const float *u, int64_t m, int act, float *out) {
    FN(act_mul_tail)(g, u, 0, m, act, out);
}
#endif

#ifdef SIMD_X86
/* exp of 8 floats x <= 0 (Cephes expf: range reduction by ln 2, degree-6 polynomial, 2^n in the
 * exponent bits; relative error ~1e-7); -inf and anything below -87 give exactly 0 */
static inline __m256 FN(exp8_neg)(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    const __m256 zero_mask = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    const __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero_mask, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

/* gated FFN activations with one exp per element of a non-positive argument, e = exp(-|x|):
 * silu(x) = x / (1 + e) for x >= 0, x e / (1 + e) below; tanh(y) = sign(y) (1 - e) / (1 + e) with
 * e = exp(-2|y|) */
static void FN(act_mul)(const float *g, const float *u, int64_t m, int act, float *out) {
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), sgn = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= m; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        __m256 a;
        if (act == 0) {
            const __m256 e = FN(exp8_neg)(_mm256_or_ps(x, sgn));                 /* exp(-|x|) */
            const __m256 num = _mm256_blendv_ps(x, _mm256_mul_ps(x, e), x);       /* x < 0: x e */
            a = _mm256_div_ps(num, _mm256_add_ps(one, e));
        } else {
            const __m256 y = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                                           _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), x), _mm256_mul_ps(x, x), x));
            const __m256 e = FN(exp8_neg)(_mm256_or_ps(_mm256_add_ps(y, y), sgn));   /* exp(-2|y|) */
            const __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
            const __m256 th = _mm256_or_ps(t, _mm256_and_ps(y, sgn));             /* sign of y */
            a = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(one, th));
        }
        _mm256_storeu_ps(out + i, _mm256_mul_ps(a, _mm256_loadu_ps(u + i)));
    }
    FN(act_mul_tail)(g, u, i, m, act, out);
}

/* acc (G, d) += sum over the n listed tokens of p_h[t] v_t: d in register tiles of 8, the G
 * accumulators of a tile in registers, each V row converted once for all G heads. V rows: f16
 * (v, vstride elements apart, by token) or, F32R, float32 rows already gathered (vf (n, d)). */
static inline __attribute__((always_inline)) void FN(av_tile)(const float *p, int64_t T, const int G,
        const uint16_t *v, int64_t vstride, const float *vf, const int F32R, const int32_t *idx, int64_t n,
        int64_t d, float *acc) {
    float wt[128 * 8];                                      /* (128, G) the tile's weights, token-major */
    for (int64_t u0 = 0; u0 < n; u0 += 128) {               /* 128 tokens: V rows stay in L1/L2 across tiles */
        const int64_t u1 = u0 + 128 < n ? u0 + 128 : n;
        /* the G rows of p lie T floats apart (often a power of two: cache-set conflicts), so the
         * tile's weights are gathered once into wt */
        for (int64_t u = u0; u < u1; u++)
            for (int h = 0; h < G; h++) wt[(u - u0) * G + h] = p[h * T + idx[u]];
        for (int64_t dc = 0; dc < d; dc += 8) {
            __m256 a[8];
            for (int h = 0; h < G; h++) a[h] = _mm256_loadu_ps(acc + h * d + dc);
            for (int64_t u = u0; u < u1; u++) {
                const __m256 x = F32R ? _mm256_loadu_ps(vf + u * d + dc)
                                      : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + idx[u] * vstride + dc)));
                const float *w = wt + (u - u0) * G;
                for (int h = 0; h < G; h++) a[h] = _mm256_fmadd_ps(_mm256_broadcast_ss(w + h), x, a[h]);
            }
            for (int h = 0; h < G; h++) _mm256_storeu_ps(acc + h * d + dc, a[h]);
        }
    }
}

#ifdef X86_VNNI
/* the avx512 copy: per token the G weights broadcast once and NZ zmm of the V row (16 NZ values
 * of d per tile) feed G NZ fmas, accumulators in registers (G NZ <= 16) */
static inline __attribute__((always_inline)) void FN(av_tile16)(const float *p, int64_t T, const int G, const int NZ,
        const uint16_t *v, int64_t vstride, const float *vf, const int F32R, const int32_t *idx, int64_t n,
        int64_t d, float *acc) {
    float wt[128 * 8];                                      /* (128, G) the tile's weights, token-major */
    for (int64_t u0 = 0; u0 < n; u0 += 128) {
        const int64_t u1 = u0 + 128 < n ? u0 + 128 : n;
        for (int64_t u = u0; u < u1; u++)
            for (int h = 0; h < G; h++) wt[(u - u0) * G + h] = p[h * T + idx[u]];
        for (int64_t dc = 0; dc < d; dc += 16 * NZ) {
            __m512 a[8][4];
            for (int h = 0; h < G; h++)
                for (int z = 0; z < NZ; z++) a[h][z] = _mm512_loadu_ps(acc + h * d + dc + 16 * z);
            for (int64_t u = u0; u < u1; u++) {
                __m512 x[4];
                for (int z = 0; z < NZ; z++)
                    x[z] = F32R ? _mm512_loadu_ps(vf + u * d + dc + 16 * z)
                                : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + idx[u] * vstride + dc + 16 * z)));
                const float *w = wt + (u - u0) * G;
                for (int h = 0; h < G; h++) {
                    const __m512 wh = _mm512_set1_ps(w[h]);
                    for (int z = 0; z < NZ; z++) a[h][z] = _mm512_fmadd_ps(wh, x[z], a[h][z]);
                }
            }
            for (int h = 0; h < G; h++)
                for (int z = 0; z < NZ; z++) _mm512_storeu_ps(acc + h * d + dc + 16 * z, a[h][z]);
        }
    }
}
/* G <= 4 and d % 64 == 0: 4 zmm (64 values) per tile, else 2 (32 values) where d % 32 == 0, else ymm */
#define AV_TILE16_G(IDX_, N_, VF_, F32R_)                                                                   \
    if (g <= 4 && d % 64 == 0) {                                                                    \
        switch (g) {                                                                                \
        case 1: FN(av_tile16)(s, T, 1, 4, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;             \
        case 2: FN(av_tile16)(s, T, 2, 4, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;             \
        case 3: FN(av_tile16)(s, T, 3, 4, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;             \
        default: FN(av_tile16)(s, T, 4, 4, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;            \
        }                                                                                           \
    } else if (d % 32 == 0) {                                                                       \
        switch (g) {                                                                                \
        case 1: FN(av_tile16)(s, T, 1, 2, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;             \
        case 2: FN(av_tile16)(s, T, 2, 2, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;             \
        case 3: FN(av_tile16)(s, T, 3, 2, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;             \
        case 4: FN(av_tile16)(s, T, 4, 2, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;             \
        case 5: FN(av_tile16)(s, T, 5, 2, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;             \
        case 6: FN(av_tile16)(s, T, 6, 2, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;             \
        case 7: FN(av_tile16)(s, T, 7, 2, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;             \
        default: FN(av_tile16)(s, T, 8, 2, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;            \
        }                                                                                           \
    } else
#else
#define AV_TILE16_G(IDX_, N_, VF_, F32R_)
#endif

#define AV_TILE_G(IDX_, N_, VF_, F32R_)                                                                     \
    switch (g) {   /* a constant G keeps the accumulators in registers */                          \
    case 1: FN(av_tile)(s, T, 1, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;                         \
    case 2: FN(av_tile)(s, T, 2, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;                         \
    case 3: FN(av_tile)(s, T, 3, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;                         \
    case 4: FN(av_tile)(s, T, 4, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;                         \
    case 5: FN(av_tile)(s, T, 5, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;                         \
    case 6: FN(av_tile)(s, T, 6, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;                         \
    case 7: FN(av_tile)(s, T, 7, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;                         \
    default: FN(av_tile)(s, T, 8, vh, vs, VF_, F32R_, IDX_, N_, d, acc); break;                        \
    }

/* 16 int8 values q to floats times sc, stored at o */
static inline void FN(scale_store16)(float *o, __m256 sc, __m128i q) {
    _mm256_storeu_ps(o, _mm256_mul_ps(sc, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
    _mm256_storeu_ps(o + 8, _mm256_mul_ps(sc, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)))));
}

/* one V row of d (a multiple of 32) values from GGML Q8_0 / Q4_0 blocks to floats: d * q, as the
 * scalar dequant_rows computes it */
static inline void FN(dequant_v_row)(const uint8_t *row, int vtype, int64_t d, float *o) {
    for (int64_t b = 0; b < d / 32; b++, o += 32) {
        const __m256 sc = _mm256_set1_ps(_cvtsh_ss(rd16(row)));
        if (vtype == Q8_0) {
            FN(scale_store16)(o, sc, _mm_loadu_si128((const __m128i *)(row + 2)));
            FN(scale_store16)(o + 16, sc, _mm_loadu_si128((const __m128i *)(row + 18)));
            row += 34;
        } else {    /* Q4_0: low nibbles are elements 0..15, high nibbles 16..31, each minus 8 */
            const __m128i q = _mm_loadu_si128((const __m128i *)(row + 2)), m4 = _mm_set1_epi8(15);
            const __m128i e8 = _mm_set1_epi8(8);
            FN(scale_store16)(o, sc, _mm_sub_epi8(_mm_and_si128(q, m4), e8));
            FN(scale_store16)(o + 16, sc, _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), e8));
            row += 18;
        }
    }
}
#endif

/* max of row[t0..t1) (-inf when empty) */
static inline float FN(row_max)(const float *row, int64_t t0, int64_t t1) {
    float mx = -INFINITY;
    int64_t t = t0;
#ifdef SIMD_X86
    __m256 vmx = _mm256_set1_ps(-INFINITY);
    for (; t + 8 <= t1; t += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(row + t));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    mx = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
#endif
    for (; t < t1; t++) mx = row[t] > mx ? row[t] : mx;
    return mx;
}

/* x[0..n) = exp(x - mx) in place (-inf gives 0), returns their sum; mx finite */
static inline float FN(exp_sub)(float *x, int64_t n, float mx) {
    float sum = 0.0f;
    int64_t t = 0;
#ifdef SIMD_X86
    __m256 vs = _mm256_setzero_ps();
    const __m256 vm = _mm256_set1_ps(mx);
    for (; t + 8 <= n; t += 8) {
        const __m256 e = FN(exp8_neg)(_mm256_sub_ps(_mm256_loadu_ps(x + t), vm));
        _mm256_storeu_ps(x + t, e);
        vs = _mm256_add_ps(vs, e);
    }
    sum = FN(hsum8)(vs);
#endif
    for (; t < n; t++) { float e = x[t] == -INFINITY ? 0.0f : expf(x[t] - mx); x[t] = e; sum += e; }
    return sum;
}

#ifdef SIMD_X86
/* the cache lines of one V row of nb bytes requested ahead: the rows a decode query keeps are
 * scattered over the cache, and without this each one's misses came one row at a time (a global
 * Gemma layer's 1024 Q4_0 rows took ~170 us cold against ~30 hot) */
static inline void FN(prefetch_row)(const uint8_t *row, int64_t nb) {
    for (int64_t o = 0; o < nb; o += 64) _mm_prefetch((const char *)(row + o), _MM_HINT_T0);
}
#define VPF 64                                              /* rows requested ahead of the dequantization */
#endif

/* acc (g, d) = sum over the n listed tokens idx of p_h[t] v_t (p: g rows, stride T); V rows of
 * type vtype (F16, or GGML Q8_0 / Q4_0 blocks: vrb bytes per head row, d <= 1024) lie vstride
 * bytes apart from vk; each V row is read once for the g heads */
static void FN(av_idx)(const float *s, int64_t T, int64_t g, const uint8_t *vk, int64_t vstride, int vtype,
                       int64_t vrb, const int32_t *idx, int64_t n, int64_t d, float *acc) {
    for (int64_t i = 0; i < g * d; i++) acc[i] = 0.0f;
    const uint16_t *vh = (const uint16_t *)vk;
    const int64_t vs = vstride / 2;                         /* in f16 elements */
#ifdef SIMD_X86
    if (d % 8 == 0 && g <= 8) {
        if (vtype == F16) {
            for (int64_t u = 0; u < n && u < 4 * VPF; u++) FN(prefetch_row)(vk + idx[u] * vstride, vrb);
            AV_TILE16_G(idx, n, NULL, 0) { AV_TILE_G(idx, n, NULL, 0) }
            return;
        }
        /* quantized rows: a tile of up to 8192 values dequantized at a time, then accumulated as f16 rows are */
        float vf[8192];
        const int64_t tile = 8192 / d;
        for (int64_t u = 0; u < n && u < VPF; u++) FN(prefetch_row)(vk + idx[u] * vstride, vrb);
        for (int64_t u0 = 0; u0 < n; u0 += tile) {
            const int64_t nt = n - u0 < tile ? n - u0 : tile;
            for (int64_t u = 0; u < nt; u++) {
                if (u0 + u + VPF < n) FN(prefetch_row)(vk + idx[u0 + u + VPF] * vstride, vrb);
                FN(dequant_v_row)(vk + idx[u0 + u] * vstride, vtype, d, vf + u * d);
            }
            AV_TILE16_G(idx + u0, nt, vf, 1) { AV_TILE_G(idx + u0, nt, vf, 1) }
        }
        return;
    }
#endif
    if (vtype != F16) {
        float row[1024];                                    /* (d,) one dequantized V row */
        for (int64_t u = 0; u < n; u++) {
            const int64_t t = idx[u];
            FN(dequant_rows)(vk + t * vstride, vrb, vtype, d, 0, 1, row);
            for (int64_t h = 0; h < g; h++) {
                const float w = s[h * T + t];
                if (w == 0.0f) continue;
                float *a = acc + h * d;
                for (int64_t e = 0; e < d; e++) a[e] += w * row[e];
            }
        }
        return;
    }
    for (int64_t u = 0; u < n; u++) {
        const int64_t t = idx[u];
        for (int64_t h = 0; h < g; h++) {
            const float w = s[h * T + t];
            if (w != 0.0f) FN(axpy_f16)(w, vh + t * vs, acc + h * d, d);
        }
    }
}

#ifdef SIMD_X86
#undef AV_TILE_G
#undef AV_TILE16_G
#endif

/* Tokens [t0, t1) of the g query heads s (g rows, stride T) that share KV head kv: per head the
 * chunk max m_h and sum l_h of p = exp(s - m_h) (written over s), and acc (g, d) = sum_t p v_t.
 * V rows (av_idx's types) are read only for tokens some head gives a nonzero weight (masked:
 * -inf). idx: scratch (t1 - t0,). */
static void FN(sav_chunk)(float *s, int64_t g, int64_t T, int64_t t0, int64_t t1, const uint8_t *v, int vtype,
                          int64_t vrb, int64_t KV, int64_t d, int64_t kv, int32_t *idx, float *acc, float *m, float *l) {
    for (int64_t h = 0; h < g; h++) {
        float *row = s + h * T;
        const float mx = FN(row_max)(row, t0, t1);
        m[h] = mx;
        if (mx == -INFINITY) {                              /* every token masked for this head */
            for (int64_t t = t0; t < t1; t++) row[t] = 0.0f;
            l[h] = 0.0f;
        } else {
            l[h] = FN(exp_sub)(row + t0, t1 - t0, mx);
        }
    }
    int64_t n = 0;                                          /* tokens with a nonzero weight in some head */
    int64_t t = t0;
#ifdef SIMD_X86
    for (; t + 8 <= t1; t += 8) {                           /* 8 at a time: all nonzero is the common case */
        __m256 nz = _mm256_setzero_ps();
        for (int64_t h = 0; h < g; h++)
            nz = _mm256_or_ps(nz, _mm256_cmp_ps(_mm256_loadu_ps(s + h * T + t), _mm256_setzero_ps(), _CMP_NEQ_OQ));
        const int bits = _mm256_movemask_ps(nz);
        if (bits == 0xFF) {
            _mm256_storeu_si256((__m256i *)(idx + n), _mm256_add_epi32(_mm256_set1_epi32((int)t), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
            n += 8;
        } else {
            for (int k = 0; k < 8; k++) if (bits >> k & 1) idx[n++] = (int32_t)(t + k);
        }
    }
#endif
    for (; t < t1; t++) {
        int any = 0;
        for (int64_t h = 0; h < g; h++) any |= s[h * T + t] != 0.0f;
        if (any) idx[n++] = (int32_t)t;
    }
    FN(av_idx)(s, T, g, v + kv * vrb, KV * vrb, vtype, vrb, idx, n, d, acc);
}

/* bins (m,) of x over [hi - 1024/sc, hi]: bin 0 holds the largest; anything below (or -inf, NaN)
 * the last bin. cnt (1024) counts them. */
static void FN(bin_count)(const float *x, int64_t m, float hi, float sc, int32_t *bins, int32_t *cnt) {
    int64_t t = 0;
#ifdef SIMD_X86
    const __m256 vh = _mm256_set1_ps(hi), vs = _mm256_set1_ps(sc), top = _mm256_set1_ps(1023.0f);
    for (; t + 8 <= m; t += 8) {    /* min(NaN, top) is top: the index is always in range */
        const __m256 b = _mm256_min_ps(_mm256_mul_ps(_mm256_sub_ps(vh, _mm256_loadu_ps(x + t)), vs), top);
        _mm256_storeu_si256((__m256i *)(bins + t), _mm256_cvttps_epi32(_mm256_max_ps(b, _mm256_setzero_ps())));
    }
#endif
    for (; t < m; t++) {
        const float b = (hi - x[t]) * sc;
        bins[t] = b < 1023.0f ? (b > 0.0f ? (int32_t)b : 0) : 1023;
    }
    for (t = 0; t < m; t++) cnt[bins[t]]++;
}

/* k-th largest (1 <= k <= n) of x (n,) (-inf allowed): binned into 1024 bins between the smallest
 * finite value and the largest, the bin holding it gathered into w (n,) and binned again over its
 * own range until few values are left, then a quickselect. bins: scratch (n,). */
static float FN(kth_largest)(const float *x, int64_t n, int64_t k, float *w, int32_t *bins) {
    float lo = INFINITY, hi = -INFINITY;
    int64_t fin = 0;
    for (int64_t t = 0; t < n; t++)
        if (x[t] > -INFINITY) { lo = x[t] < lo ? x[t] : lo; hi = x[t] > hi ? x[t] : hi; fin++; }
    if (fin < k) return -INFINITY;                          /* fewer finite values than k */
    const float *cur = x;
    int64_t m = n;
    while (m > 64 && hi > lo) {
        const float sc = 1024.0f / (hi - lo);
        if (!(sc < INFINITY)) break;                        /* a range too narrow to split */
        int32_t cnt[1024] = {0};
        FN(bin_count)(cur, m, hi, sc, bins, cnt);
        int b = 0;
        int64_t above = 0;
        while (b < 1023 && above + cnt[b] < k) above += cnt[b++];
        int64_t mm = 0;
        float nlo = INFINITY, nhi = -INFINITY;
        for (int64_t t = 0; t < m; t++)                     /* in place once cur is w: mm <= t */
            if (bins[t] == b) {
                const float v = cur[t];
                w[mm++] = v;
                if (v > -INFINITY) { nlo = v < nlo ? v : nlo; nhi = v > nhi ? v : nhi; }
            }
        cur = w; m = mm; k -= above; lo = nlo; hi = nhi;
    }
    if (cur != w) { memcpy(w, cur, (size_t)m * sizeof(float)); }
    return select_kth(w, m, k);
}

/* per-head maxima m (g,) of the g rows s (stride T) over tokens [t0, t1) */
static void FN(group_max)(const float *s, int64_t g, int64_t T, int64_t t0, int64_t t1, float *m) {
    for (int64_t h = 0; h < g; h++) m[h] = FN(row_max)(s + h * T, t0, t1);
}

/* the rank of token sparsity for packed tokens [t0, t1) (within [p0, p0 + n)): u[t - p0] = max over
 * heads of s_h,t - m_h, m the heads' maxima over all T tokens */
static void FN(group_u)(const float *s, int64_t g, int64_t T, int64_t p0, int64_t t0, int64_t t1, const float *m,
                        float *u) {
    for (int64_t t = t0; t < t1; t++) u[t - p0] = -INFINITY;
    for (int64_t h = 0; h < g; h++) {                       /* u = max over heads of s - m_h */
        if (m[h] == -INFINITY) continue;
        const float *row = s + h * T;
        int64_t t = t0;
#ifdef SIMD_X86
        const __m256 vm = _mm256_set1_ps(m[h]);
        for (; t + 8 <= t1; t += 8)
            _mm256_storeu_ps(u + t - p0, _mm256_max_ps(_mm256_loadu_ps(u + t - p0), _mm256_sub_ps(_mm256_loadu_ps(row + t), vm)));
#endif
        for (; t < t1; t++) { const float x = row[t] - m[h]; u[t - p0] = x > u[t - p0] ? x : u[t - p0]; }
    }
}

/* One query's KV head group of g heads s (g rows, stride T): m (g,) each head's max over all T
 * tokens, u (n,) the rank of the n packed tokens from p0 */
static void FN(group_rank)(const float *s, int64_t g, int64_t T, int64_t p0, int64_t n, float *m, float *u) {
    FN(group_max)(s, g, T, 0, T, m);
    FN(group_u)(s, g, T, p0, p0, p0 + n, m, u);
}

/* The tokens of [t0, t1) a decode query's KV head group keeps: every sink [0, p0) and window token
 * [p0 + n, T) unmasked in some head, and the packed tokens ranked u >= cut; their weights
 * exp(s - m_h) are written over s, l (g,) gets their sums and acc (g, d) their V rows' sums (read
 * once each). Scratch: w, idx (t1 - t0,). */
static void FN(sav_kept)(float *s, int64_t g, int64_t T, int64_t p0, int64_t n, int64_t t0, int64_t t1, float cut,
                         const float *m, const float *u, const uint8_t *v, int vtype, int64_t vrb, int64_t KV,
                         int64_t d, int64_t kv, float *w, int32_t *idx, float *acc, float *l) {
    int64_t ns = 0;
    const int64_t pe = p0 + n;
    for (int64_t t = t0; t < (t1 < p0 ? t1 : p0); t++) {     /* sinks: unless masked in every head */
        int keep = 0;
        for (int64_t h = 0; h < g; h++) keep |= s[h * T + t] > -INFINITY;
        if (keep) idx[ns++] = (int32_t)t;
    }
    int64_t t = t0 > p0 ? t0 : p0;
    const int64_t te = t1 < pe ? t1 : pe;
#ifdef SIMD_X86
    const __m256 vc = _mm256_set1_ps(cut > -INFINITY ? cut : -FLT_MAX);   /* -inf never kept */
    for (; t + 8 <= te; t += 8) {
        int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(u + t - p0), vc, _CMP_GE_OQ));
        while (bits) { idx[ns++] = (int32_t)(t + __builtin_ctz(bits)); bits &= bits - 1; }
    }
#endif
    for (; t < te; t++)
        if (u[t - p0] >= cut && u[t - p0] > -INFINITY) idx[ns++] = (int32_t)t;
    for (t = t0 > pe ? t0 : pe; t < t1; t++) {              /* window */
        int keep = 0;
        for (int64_t h = 0; h < g; h++) keep |= s[h * T + t] > -INFINITY;
        if (keep) idx[ns++] = (int32_t)t;
    }
    for (int64_t h = 0; h < g; h++) {                       /* weights of the kept tokens only */
        float *row = s + h * T;
        if (m[h] == -INFINITY) { for (int64_t i = 0; i < ns; i++) row[idx[i]] = 0.0f; l[h] = 0.0f; continue; }
        for (int64_t i = 0; i < ns; i++) w[i] = row[idx[i]];
        l[h] = FN(exp_sub)(w, ns, m[h]);
        for (int64_t i = 0; i < ns; i++) row[idx[i]] = w[i];
    }
    FN(av_idx)(s, T, g, v + kv * vrb, KV * vrb, vtype, vrb, idx, ns, d, acc);
}

/* kth_largest as a statement (BY_PATH calls have no value) */
static void FN(kth_cut)(const float *x, int64_t n, int64_t k, float *w, int32_t *bins, float *cut) {
    *cut = FN(kth_largest)(x, n, k, w, bins);
}

/* Token sparsity for one decode query, one KV head's g query heads s (g rows, stride T): m_h =
 * the head's max over all T tokens; the n packed tokens from p0 ranked by u_t = max_h (s_h,t - m_h);
 * the k best (all tied at the cut) with every unmasked sink and window token kept (sav_kept).
 * Scratch: m (g,), u (n,), w (T,), idx (T,). */
static void FN(sav_topk)(float *s, int64_t g, int64_t T, int64_t p0, int64_t n, int64_t k, const uint8_t *v,
                         int vtype, int64_t vrb, int64_t KV, int64_t d, int64_t kv, float *m, float *u, float *w,
                         int32_t *idx, float *acc, float *l) {
    FN(group_rank)(s, g, T, p0, n, m, u);
    const float cut = FN(kth_largest)(u, n, k, w, idx);
    FN(sav_kept)(s, g, T, p0, n, 0, T, cut, m, u, v, vtype, vrb, KV, d, kv, w, idx, acc, l);
}

/* Token sparsity on prefill scores, in place (svdq_ref.topk_group_mask): for the g heads s (g rows,
 * stride T) of one query and KV head, every packed token [p0, p0 + n) ranked below the k-th by
 * group_rank (or at -inf) becomes -inf in all g rows. Scratch: m (g,), u (n,), w (n,), bins (n,). */
static void FN(topk_mask)(float *s, int64_t g, int64_t T, int64_t p0, int64_t n, int64_t k, float *m, float *u,
                          float *w, int32_t *bins) {
    FN(group_rank)(s, g, T, p0, n, m, u);
    const float cut = FN(kth_largest)(u, n, k, w, bins);
    for (int64_t t = 0; t < n; t++)
        if (!(u[t] >= cut && u[t] > -INFINITY))
            for (int64_t h = 0; h < g; h++) s[h * T + p0 + t] = -INFINITY;
}
