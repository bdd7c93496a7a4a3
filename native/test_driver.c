/* Test driver for the native kernels without Python: tests/test_neon_qemu.py builds it with
 * kernels.c natively (x86 paths) and statically for aarch64 (run under qemu-aarch64), feeds it
 * one binary file of kernel calls and compares what it writes with the numpy oracles.
 *   test_driver --paths        prints "supported: <path ids>" and "active: <path id>"
 *   test_driver IN OUT         runs every call in IN, writes one result per call to OUT
 * IN, little-endian int64 words: per call op, path (-1 auto), params[16], nbuf, then nbuf times
 * (nbytes, bytes). OUT per call: rc (int64), nbytes (int64), the output floats. rc -100 means the
 * path is not supported here, -101 that the buffers do not match the call. Outputs start as NaN
 * so that a kernel refusing a call (rc < 0) can be seen to leave them untouched. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "svdq_edge.h"

enum { OP_MATMUL = 1, OP_DEQUANT = 2, OP_GET_ROWS = 3, OP_LATENT = 4, OP_QK = 5, OP_SOFTMAX_AV = 6, OP_LATENT_ATTEND = 7,
       OP_SOFTMAX_AV_ROWS = 8, OP_ATTEND = 9 };
#define MAXBUF 14
#define NPARAM 16

static int rd64(FILE *f, int64_t *v) { return fread(v, 8, 1, f) == 1; }

/* floats the call writes, from its params (0 where they are negative: the kernel must refuse) */
static int64_t out_count(int64_t op, const int64_t *p) {
    int64_t c;
    switch (op) {
    case OP_MATMUL: c = p[3] * p[1]; break;                 /* (n, rows) */
    case OP_DEQUANT: c = (p[5] - p[4]) * p[3]; break;       /* (r1 - r0, k) */
    case OP_GET_ROWS: c = p[4] * p[3]; break;               /* (m, k) */
    case OP_LATENT: c = p[5] * p[4] * p[6]; break;          /* (m, nblk * B) */
    case OP_QK: c = p[0] * p[1] * p[4]; break;              /* (nq, H, T) */
    case OP_SOFTMAX_AV: c = p[0] * p[1] * p[3]; break;      /* (nq, H, d) */
    case OP_LATENT_ATTEND: c = p[6] * p[8]; break;          /* (H, d) */
    case OP_SOFTMAX_AV_ROWS: c = p[0] * p[1] * p[3]; break; /* (nq, H, d) */
    case OP_ATTEND: c = p[0] * p[2]; break;                 /* (H, d) */
    default: c = 0;
    }
    return c > 0 ? c : 0;
}

/* bytes of one head's V row of d values: Q8_0 (8), Q4_0 (2) blocks of 32, else f16 */
static int64_t v_row_bytes(int64_t vtype, int64_t d) { return vtype == 8 ? d / 32 * 34 : vtype == 2 ? d / 32 * 18 : 2 * d; }

static int64_t call(int64_t op, const int64_t *p, unsigned char **b, const int64_t *nbytes, int64_t nbuf, float *out) {
    switch (op) {
    case OP_MATMUL:       /* p: qtype, rows, row_bytes, n, k; b: w (rows, row_bytes), x float (n, k) */
        if (nbuf != 2 || nbytes[0] != p[1] * p[2] || nbytes[1] != 4 * p[3] * p[4]) return -101;
        return svdq_matmul(b[0], p[1], p[2], (int)p[0], (const float *)b[1], p[3], p[4], out);
    case OP_DEQUANT:      /* p: qtype, rows, row_bytes, k, r0, r1; b: w */
        if (nbuf != 1 || nbytes[0] != p[1] * p[2]) return -101;
        return svdq_dequant_rows(b[0], p[1], p[2], (int)p[0], p[3], p[4], p[5], out);
    case OP_GET_ROWS:     /* p: qtype, rows, row_bytes, k, m; b: w, ids int64 (m,) */
        if (nbuf != 2 || nbytes[0] != p[1] * p[2] || nbytes[1] != 8 * p[4]) return -101;
        return svdq_get_rows(b[0], p[1], p[2], (int)p[0], p[3], (const long long *)b[1], p[4], out);
    case OP_LATENT: {     /* p: n8, n4, n2, n1, nblk, m, B, rb; b: c8, c4, c2, c1, scale, min (f16 bits),
                           * qt float (nrb, m, r), nrb = nblk*B/rb (1 when rb = 0) */
        const int64_t nrb = p[7] > 0 ? p[4] * p[6] / p[7] : 1;
        if (nbuf != 7 || nbytes[0] != p[4] * p[0] * p[6] || nbytes[1] != p[4] * p[1] * p[6] / 2
            || nbytes[2] != p[4] * p[2] * p[6] / 4 || nbytes[3] != p[4] * p[3] * p[6] / 8
            || nbytes[4] != 2 * p[4] * (p[0] + p[1] + p[2] + p[3]) || nbytes[5] != nbytes[4]
            || nbytes[6] != 4 * nrb * p[5] * (p[0] + p[1] + p[2] + p[3])) return -101;
        return svdq_latent_score(b[0], b[1], b[2], b[3], p[0], p[1], p[2], p[3], (const unsigned short *)b[4],
                                 (const unsigned short *)b[5], p[4], (const float *)b[6], p[5], p[6], p[7], out);
    }
    case OP_QK:           /* p: nq, H, KV, d, T; b: q float (nq, H, d), k f16 bits (T, KV, d) */
        if (nbuf != 2 || nbytes[0] != 4 * p[0] * p[1] * p[3] || nbytes[1] != 2 * p[4] * p[2] * p[3]) return -101;
        return svdq_qk_f16((const float *)b[0], (const unsigned short *)b[1], p[0], p[1], p[2], p[3], p[4], out);
    case OP_SOFTMAX_AV:   /* p: nq, H, KV, d, T; b: scores float (nq, H, T), v f16 bits (T, KV, d) */
        if (nbuf != 2 || nbytes[0] != 4 * p[0] * p[1] * p[4] || nbytes[1] != 2 * p[4] * p[2] * p[3]) return -101;
        return svdq_softmax_av_f16((float *)b[0], (const unsigned short *)b[1], p[0], p[1], p[2], p[3], p[4], out);
    case OP_LATENT_ATTEND: {  /* p: n8, n4, n2, n1, nblk, B, H, KV, d, sinks, nwin, topk, rb, neox, n_ctx, vtype;
                               * b: c8, c4, c2, c1, scale, min, q float (H, d), vmu float (KV, d, r+1), kf f16
                               * bits (sinks+nwin, KV, d), v (T, KV, d) f16 bits or (T, KV, row bytes) Q8_0 /
                               * Q4_0 blocks, scores float (H, T), then cos, sin float (n_ctx, d/2) (empty
                               * when rb = 0) */
        const int64_t r = p[0] + p[1] + p[2] + p[3], T = p[9] + p[4] * p[5] + p[10];
        const int64_t vrow = v_row_bytes(p[15], p[8]);
        if (nbuf != 13 || nbytes[0] != p[4] * p[0] * p[5] || nbytes[1] != p[4] * p[1] * p[5] / 2
            || nbytes[2] != p[4] * p[2] * p[5] / 4 || nbytes[3] != p[4] * p[3] * p[5] / 8
            || nbytes[4] != 2 * p[4] * r || nbytes[5] != nbytes[4] || nbytes[6] != 4 * p[6] * p[8]
            || nbytes[7] != 4 * p[7] * p[8] * (r + 1) || nbytes[8] != 2 * (p[9] + p[10]) * p[7] * p[8]
            || nbytes[9] != T * p[7] * vrow || nbytes[10] != 4 * p[6] * T
            || nbytes[11] != 4 * p[14] * (p[8] / 2) || nbytes[12] != nbytes[11]) return -101;
        return svdq_latent_attend((const float *)b[6], p[6], p[7], p[8], (const float *)b[7], b[0], b[1], b[2], b[3],
                                  p[0], p[1], p[2], p[3], (const unsigned short *)b[4], (const unsigned short *)b[5],
                                  p[4], p[5], (const unsigned short *)b[8], p[9], p[10], b[9], (int)p[15],
                                  p[11], nbytes[11] ? (const float *)b[11] : NULL,
                                  nbytes[12] ? (const float *)b[12] : NULL, p[14], p[12], (int)p[13], (float *)b[10], out);
    }
    case OP_SOFTMAX_AV_ROWS: {  /* p: nq, H, KV, d, T, vtype, p0, n, k, kv_major; b: scores float (nq, H, T)
                                 * or (KV, nq, H/KV, T), v (T, KV, d) f16 bits or Q8_0 / Q4_0 rows */
        const int64_t vrow = v_row_bytes(p[5], p[3]);
        if (nbuf != 2 || nbytes[0] != 4 * p[0] * p[1] * p[4] || nbytes[1] != p[4] * p[2] * vrow) return -101;
        return svdq_softmax_av((float *)b[0], b[1], (int)p[5], p[0], p[1], p[2], p[3], p[4], p[6], p[7], p[8],
                               (int)p[9], out);
    }
    case OP_ATTEND:       /* p: H, KV, d, T; b: q float (H, d), k, v f16 bits (T, KV, d), scores float (H, T) */
        if (nbuf != 4 || nbytes[0] != 4 * p[0] * p[2] || nbytes[1] != 2 * p[3] * p[1] * p[2] || nbytes[2] != nbytes[1]
            || nbytes[3] != 4 * p[0] * p[3]) return -101;
        return svdq_attend_f16((const float *)b[0], (const unsigned short *)b[1], (const unsigned short *)b[2], p[0],
                               p[1], p[2], p[3], (float *)b[3], out);
    default:
        return -101;
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--paths")) {
        printf("supported:");
        for (int p = 0; p < 8; p++) if (svdq_path_supported(p)) printf(" %d", p);
        printf("\nactive: %d\n", svdq_active_path());
        return 0;
    }
    if (argc != 3) { fprintf(stderr, "usage: %s --paths | IN OUT\n", argv[0]); return 2; }
    FILE *in = fopen(argv[1], "rb"), *res = fopen(argv[2], "wb");
    if (!in || !res) { perror("open"); return 2; }
    int64_t op;
    while (rd64(in, &op)) {
        int64_t path, p[NPARAM], nbuf, nbytes[MAXBUF] = {0};
        unsigned char *b[MAXBUF] = {0};
        if (!rd64(in, &path)) return 3;
        for (int i = 0; i < NPARAM; i++) if (!rd64(in, &p[i])) return 3;
        if (!rd64(in, &nbuf) || nbuf < 0 || nbuf > MAXBUF) return 3;
        /* every buffer gets its own allocation, so an overread past it is a real overread */
        for (int64_t i = 0; i < nbuf; i++) {
            if (!rd64(in, &nbytes[i]) || nbytes[i] < 0) return 3;
            b[i] = malloc((size_t)nbytes[i] + 1);
            if (!b[i] || fread(b[i], 1, (size_t)nbytes[i], in) != (size_t)nbytes[i]) return 3;
        }
        const int64_t cnt = out_count(op, p);
        float *out = malloc((size_t)cnt * 4 + 4);
        for (int64_t i = 0; i < cnt; i++) out[i] = NAN;
        int64_t rc = svdq_set_path((int)path) ? -100 : call(op, p, b, nbytes, nbuf, out);
        svdq_set_path(-1);
        const int64_t ob = 4 * cnt;
        fwrite(&rc, 8, 1, res);
        fwrite(&ob, 8, 1, res);
        fwrite(out, 4, (size_t)cnt, res);
        free(out);
        for (int64_t i = 0; i < nbuf; i++) free(b[i]);
    }
    fclose(res);
    return 0;
}
