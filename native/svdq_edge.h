/* svdq-edge native kernels: the C interface, also the cffi cdef (plain prototypes only).
 * Every function checks its sizes first and returns 0 on success, a negative code on error:
 *   -1 unsupported type, -2 row_bytes does not match type and k, -3 bad size, -4 id out of range, -5 out of memory.
 * Weights are GGML blocks, uint8 (rows, row_bytes); activations float32 row-major. qtype 106 is
 * Q5_0X4, Q5_0 regrouped by svdq_repack for the decode matvec (not a GGML type). */
int svdq_matmul(const unsigned char *w, long long rows, long long row_bytes, int qtype,
                const float *x, long long n, long long k, float *out);
int svdq_matmul_multi(long long nw, const unsigned char **w, const long long *rows, const long long *row_bytes,
                      const int *types, const float *x, long long n, long long k, float **out);
int svdq_dequant_rows(const unsigned char *w, long long rows, long long row_bytes, int qtype,
                      long long k, long long r0, long long r1, float *out);
int svdq_get_rows(const unsigned char *w, long long rows, long long row_bytes, int qtype,
                  long long k, const long long *ids, long long m, float *out);
int svdq_latent_score(const unsigned char *c8, const unsigned char *c4, const unsigned char *c2,
                      const unsigned char *c1, long long n8, long long n4, long long n2, long long n1,
                      const unsigned short *scale, const unsigned short *mn, long long nblk,
                      const float *qt, long long m, long long block, long long rb, float *out);
int svdq_latent_attend(const float *q, long long H, long long KV, long long d, const float *vmu,
                       const unsigned char *c8, const unsigned char *c4, const unsigned char *c2,
                       const unsigned char *c1, long long n8, long long n4, long long n2, long long n1,
                       const unsigned short *scale, const unsigned short *mn, long long nblk, long long block,
                       const unsigned short *kf, long long sinks, long long nwin, const unsigned char *v, int vtype,
                       long long topk, const float *cos_t, const float *sin_t, long long n_ctx, long long rb,
                       int neox, float *scores, float *out);
int svdq_topk_mask(float *s, long long nq, long long H, long long KV, long long T, long long p0, long long n,
                   long long k);
int svdq_quantize_rows(const float *x, long long n, long long k, int qtype, unsigned char *out);
int svdq_qk_f16(const float *q, const unsigned short *k, long long nq, long long H, long long KV,
                long long d, long long T, float *out);
int svdq_softmax_av_f16(float *scores, const unsigned short *v, long long nq, long long H, long long KV,
                        long long d, long long T, float *out);
/* one decode query over all T f16 keys and values (no mask): q (H, d) scaled, scores (H*T,) scratch,
 * out (H, d) */
int svdq_attend_f16(const float *q, const unsigned short *k, const unsigned short *v, long long H, long long KV,
                    long long d, long long T, float *scores, float *out);
/* a dense f16 cache's decode step: k (KV, d) roped at pos and v stored in row `row` of kc, vc
 * (cap, KV, d), then q (H, d) * scale attends rows lo..row; scores (H*(row-lo+1),) scratch, out (H, d) */
int svdq_dense_decode(const float *q, float scale, const float *k, const float *v, long long H, long long KV,
                      long long d, const float *cos_t, const float *sin_t, long long n_ctx, long long pos, int neox,
                      unsigned short *kc, unsigned short *vc, long long cap, long long row, long long lo,
                      float *scores, float *out);
/* softmax.V over V rows of vtype F16, Q8_0 or Q4_0 ((T, KV, d) as GGML rows); scores (nq, H, T), or
 * with kv_major (KV, nq, H/KV, T); with 0 < k < n each query's KV head group keeps only its k best
 * tokens of [p0, p0 + n) besides the others (token sparsity); scores are overwritten */
int svdq_softmax_av(float *scores, const unsigned char *v, int vtype, long long nq, long long H, long long KV,
                    long long d, long long T, long long p0, long long n, long long k, int kv_major, float *out);
int svdq_repack(const unsigned char *w, long long rows, long long row_bytes, int qtype, long long k,
                unsigned char *dst);
void svdq_set_threads(int n);
int svdq_get_threads(void);
int svdq_set_path(int path);
int svdq_active_path(void);
int svdq_path_supported(int path);
int svdq_rmsnorm(const float *x, const float *w, long long n, long long d, float eps, float *out);
int svdq_act_mul(const float *g, const float *u, long long m, int act, float *out);
int svdq_rope(const float *x, long long n, long long heads, long long d, const float *cos_t,
              const float *sin_t, long long n_ctx, long long pos0, int neox, float *out);
/* One decode token through a layer's two halves around attention, composed from the calls above
 * (two native calls per layer instead of a dozen from Python). Filled once per layer; optional
 * tensors NULL. w[0..6]: q, k, v, output, gate, up, down as GGML blocks. */
typedef struct {
    long long n_embd, n_head, n_kv, head_dim, n_ff;
    float eps;
    int act;
    const float *attn_norm, *ffn_norm, *post_attn_norm, *post_ffn_norm, *q_norm, *k_norm, *bq, *bk, *bv;
    const unsigned char *w[7];
    long long rows[7], row_bytes[7];
    int types[7];
} svdq_layer;
int svdq_layer_attn_in(const svdq_layer *L, const float *x, const float *cos_t, const float *sin_t,
                       long long n_ctx, long long pos, int neox, float *h, float *q, float *k, float *v);
int svdq_layer_ffn(const svdq_layer *L, const float *o, float *x, float *scratch);
