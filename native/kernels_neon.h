/* NEON bodies for aarch64, included by kernels_impl.h in its NEON copies (SFX _neon for plain
 * armv8-a, _neondot under `#pragma GCC target("arch=armv8.2-a+dotprod")` with NEON_DOT defined).
 * The hot weight types (Q8_0, Q5_0, Q4_K, Q6_K) decode each 32-value sub-block into two int8x16
 * vectors of signed codes, exactly the q[] of decode32, and take the integer dot with the int8
 * activation codes per 16 values: vdotq_s32 with dotprod, else vmull_s8 + vpadalq_s16 (int8
 * products fit int16, pair sums int32). The int32 lanes are scaled and accumulated in float, so
 * only the float summation order differs from the scalar path. Callers have checked sizes. */

/* acc (4 x int32) += the 16 products a[l] * b[l], grouped into 4 lanes */
static inline __attribute__((always_inline)) int32x4_t FN(dot16_s8)(int32x4_t acc, int8x16_t a, int8x16_t b) {
#ifdef NEON_DOT
    return vdotq_s32(acc, a, b);
#else
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
#endif
}

/* rows [r0, r1) of W . all n activations, NEON: w (rows, row_bytes) GGML blocks of type T;
 * xq int8 (n, k) codes, xd float (n, k/32) scales, xs int32 (n, k/16) code sums; out (n, rows) */
static inline __attribute__((always_inline)) void FN(mm_rows_neon)(const uint8_t *w, int64_t row_bytes, const int T,
        const int8_t *xq, const float *xd, const int32_t *xs, int64_t n, int64_t k,
        int64_t r0, int64_t r1, int64_t rows, float *out) {
    const int64_t nb = k / 32;
    const uint8x16_t m4 = vdupq_n_u8(15);
    /* Q5_0's high bits: byte l of a lane group tests bit l % 8 of its qh byte */
    static const uint8_t bitsel[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bsel = vld1q_u8(bitsel);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *xt = xq + t * k;
            const float *dxt = xd + t * nb;
            const int32_t *st = xs + t * (k / 16);
            float32x4_t acc = vdupq_n_f32(0.0f);
            float accm = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                /* w0, w1: signed codes of values 0-15 and 16-31; s0, s1 their scales */
                int8x16_t w0, w1;
                float s0, s1;
                if (T == Q8_0) {
                    const uint8_t *o = row + b * 34;
                    w0 = vld1q_s8((const int8_t *)(o + 2));
                    w1 = vld1q_s8((const int8_t *)(o + 18));
                    s0 = s1 = h2f(rd16(o));
                } else if (T == Q5_0) {
                    const uint8_t *o = row + b * 22;
                    const uint8x16_t qs = vld1q_u8(o + 6);
                    /* 5th bit of value l is bit l of the 32-bit qh at o + 2 */
                    const uint8x16_t h0 = vtstq_u8(vcombine_u8(vdup_n_u8(o[2]), vdup_n_u8(o[3])), bsel);
                    const uint8x16_t h1 = vtstq_u8(vcombine_u8(vdup_n_u8(o[4]), vdup_n_u8(o[5])), bsel);
                    const uint8x16_t u0 = vorrq_u8(vandq_u8(qs, m4), vandq_u8(h0, vdupq_n_u8(16)));
                    const uint8x16_t u1 = vorrq_u8(vshrq_n_u8(qs, 4), vandq_u8(h1, vdupq_n_u8(16)));
                    w0 = vsubq_s8(vreinterpretq_s8_u8(u0), vdupq_n_s8(16));
                    w1 = vsubq_s8(vreinterpretq_s8_u8(u1), vdupq_n_s8(16));
                    s0 = s1 = h2f(rd16(o));
                } else if (T == Q4_K) {
                    const uint8_t *o = row + (b >> 3) * 144;
                    const int j = (int)(b & 7);
                    const uint8_t *scb = o + 4;
                    int s, mn;
                    scale_min_k4(scb, j, &s, &mn);
                    /* sub-block j is the low (even j) or high (odd j) nibbles of qs[32 (j/2) ..] */
                    const uint8_t *qs = o + 16 + (j >> 1) * 32;
                    const int8x16_t sh = vdupq_n_s8((int8_t)(-4 * (j & 1)));
                    w0 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(vld1q_u8(qs), sh), m4));
                    w1 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(vld1q_u8(qs + 16), sh), m4));
                    s0 = s1 = h2f(rd16(o)) * (float)s;
                    /* codes are unsigned: the min enters through the activation code sums */
                    accm += dxt[b] * (-h2f(rd16(o + 2)) * (float)mn) * (float)(st[2 * b] + st[2 * b + 1]);
                } else { /* Q6_K */
                    const uint8_t *o = row + (b >> 3) * 210;
                    const int j = (int)(b & 7), hh = j >> 2, p = j & 3;
                    const uint8_t *ql = o + hh * 64 + ((p & 1) ? 32 : 0);
                    const uint8_t *qh = o + 128 + hh * 32;
                    /* low 4 bits: nibble p / 2 of ql; high 2 bits: bits 2p, 2p+1 of qh */
                    const int8x16_t shl = vdupq_n_s8((int8_t)(p >= 2 ? -4 : 0)), shh = vdupq_n_s8((int8_t)(4 - 2 * p));
                    const uint8x16_t u0 = vorrq_u8(vandq_u8(vshlq_u8(vld1q_u8(ql), shl), m4),
                                                   vandq_u8(vshlq_u8(vld1q_u8(qh), shh), vdupq_n_u8(0x30)));
                    const uint8x16_t u1 = vorrq_u8(vandq_u8(vshlq_u8(vld1q_u8(ql + 16), shl), m4),
                                                   vandq_u8(vshlq_u8(vld1q_u8(qh + 16), shh), vdupq_n_u8(0x30)));
                    w0 = vsubq_s8(vreinterpretq_s8_u8(u0), vdupq_n_s8(32));
                    w1 = vsubq_s8(vreinterpretq_s8_u8(u1), vdupq_n_s8(32));
                    const int8_t *scs = (const int8_t *)(o + 192 + hh * 8 + p * 2);
                    const float d = h2f(rd16(o + 208));
                    s0 = d * (float)scs[0]; s1 = d * (float)scs[1];
                }
                const int8x16_t x0 = vld1q_s8(xt + b * 32), x1 = vld1q_s8(xt + b * 32 + 16);
                const int32x4_t p0 = FN(dot16_s8)(vdupq_n_s32(0), w0, x0);
                const int32x4_t p1 = FN(dot16_s8)(vdupq_n_s32(0), w1, x1);
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p0), s0 * dxt[b]);
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p1), s1 * dxt[b]);
            }
            out[t * rows + r] = vaddvq_f32(acc) + accm;
        }
    }
}

/* q float (d,) . k f16 bits (d,): 8 values per step, scalar tail */
static inline float FN(dot_f16_neon)(const float *q, const uint16_t *k, int64_t d) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(k + i));
        a0 = vfmaq_f32(a0, vld1q_f32(q + i), vcvt_f32_f16(vget_low_f16(h)));
        a1 = vfmaq_f32(a1, vld1q_f32(q + i + 4), vcvt_high_f32_f16(h));
    }
    float s = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < d; i++) s += q[i] * h2f(k[i]);
    return s;
}

/* o float (d,) += a * v f16 bits (d,) */
static inline void FN(axpy_f16_neon)(float a, const uint16_t *v, float *o, int64_t d) {
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(v + i));
        vst1q_f32(o + i, vfmaq_n_f32(vld1q_f32(o + i), vcvt_f32_f16(vget_low_f16(h)), a));
        vst1q_f32(o + i + 4, vfmaq_n_f32(vld1q_f32(o + i + 4), vcvt_high_f32_f16(h), a));
    }
    for (; i < d; i++) o[i] += a * h2f(v[i]);
}
