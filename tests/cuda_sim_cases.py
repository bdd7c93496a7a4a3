"""CUDA kernels and the GPU runner under Numba's CUDA simulator, against the numpy oracles.

Run by tests/test_cuda_sim.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the variable must be set
before numba is imported, and the rest of the suite imports numba for the CPU JIT) and
SVDQ_EDGE_BACKEND=numpy (so the CPU path it compares with uses float activations, as the GPU does).
Sizes are small: the simulator runs every CUDA thread as a Python thread.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("run through tests/test_cuda_sim.py (needs NUMBA_ENABLE_CUDASIM=1 before numba is imported)",
                allow_module_level=True)

from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import GGUFWriter  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

from svdq_edge.kernels import cuda_backend, ref, svdq_ref  # noqa: E402
from svdq_edge.quants import LAYOUTS, row_bytes  # noqa: E402
from svdq_edge.rope import RoPE  # noqa: E402

# the simulator's syncthreads polls other Python threads: a short switch interval makes it ~4x faster
sys.setswitchinterval(1e-4)

K = cuda_backend()
cu = K.cuda
QTYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
F16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
              T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def random_blocks(qtype, rows, cols, seed, scale_hi=0x20):
    """GGML rows of random bits with finite f16 scales (high byte scale_hi.. +8: ~1e-3 .. 0.1)."""
    rng = np.random.default_rng(seed)
    if qtype in (T.F32, T.F16, T.BF16):
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        return np.ascontiguousarray(w.view(np.uint8) if qtype == T.F32 else gguf_quantize(w, qtype).view(np.uint8))
    data = rng.integers(0, 256, size=(rows, row_bytes(qtype, cols)), dtype=np.uint8)
    b = data.reshape(-1, LAYOUTS[qtype][1])
    for o in F16_FIELDS[qtype]:
        b[:, o + 1] = scale_hi + (b[:, o + 1] % 8)
    return data


def dev(a):
    return cu.to_device(np.ascontiguousarray(a))


# ----------------------------------------------------------------------------------------------
# weights: dequantization bit-exact, matmul against the float64 oracle

def test_half_bit_patterns():
    # every sign and exponent (zeros, subnormals, normals, inf, nan) with 64 mantissas each
    mant = np.r_[0, 1, 2, 511, 512, 1022, 1023, np.random.default_rng(0).integers(3, 1021, 57)]
    bits = ((np.arange(64)[:, None] << 10) | mant[None, :]).astype(np.uint16).reshape(-1)   # (4096,)
    data = bits.view(np.uint8).reshape(16, 512)                           # F16 rows of 256
    out = cu.device_array((16, 256), np.float32)
    K.get_rows(dev(data), int(T.F16), 256, dev(np.arange(16, dtype=np.int32)), 16, out)
    got = out.copy_to_host().reshape(-1)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))   # signed zeros too


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_get_rows_bit_exact(qtype):
    rows, cols = 6, 256
    data = random_blocks(qtype, rows, cols, int(qtype))
    ids = np.array([5, 0, 3, 3], np.int32)
    out = cu.device_array((4, cols), np.float32)
    K.get_rows(dev(data), int(qtype), cols, dev(ids), 4, out, scale=1.0)
    assert np.array_equal(out.copy_to_host(), ref.dequantize(data[ids], int(qtype)))
    # one token as a kernel argument, scaled (gemma's embedding scale)
    K.get_rows(dev(data), int(qtype), cols, dev(ids), 1, out, scale=2.5, tok=2)
    assert np.array_equal(out.copy_to_host()[0], ref.dequantize(data[2:3], int(qtype))[0] * np.float32(2.5))


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("n", [1, 11])
def test_matmul_matches_oracle(qtype, n):
    rows, cols = 9, 256                          # 9 rows: a partial block of ROWS; 11 tokens: 2 tiles
    data = random_blocks(qtype, rows, cols, 100 + int(qtype))
    x = np.random.default_rng(n).standard_normal((n + 2, cols)).astype(np.float32)
    W = ref.dequantize(data, int(qtype)).astype(np.float64)
    want = (x.astype(np.float64) @ W.T).astype(np.float32)
    out = cu.to_device(np.full((n + 1, rows), 7.0, np.float32))
    K.matmul(dev(data), int(qtype), rows, cols, dev(x), n, out, x0=2, o0=1)
    got = out.copy_to_host()
    tol = 1e-5 * np.abs(x).sum(1).max() * np.abs(W).max()
    assert np.all(got[0] == 7.0)                                          # rows before o0 untouched
    assert np.abs(got[1:] - want[2:]).max() <= tol


def test_matmul_bias_and_accumulate():
    rows, cols, n = 10, 64, 3
    data = random_blocks(T.Q8_0, rows, cols, 7)
    x = np.random.default_rng(1).standard_normal((n, cols)).astype(np.float32)
    b = np.random.default_rng(2).standard_normal(rows).astype(np.float32)
    want = x @ ref.dequantize(data, int(T.Q8_0)).T
    out = cu.device_array((n, rows), np.float32)
    K.matmul(dev(data), int(T.Q8_0), rows, cols, dev(x), n, out, bias=dev(b))
    assert np.allclose(out.copy_to_host(), want + b, rtol=1e-5, atol=1e-5)
    res = np.ones((n, rows), np.float32)
    out = dev(res)
    K.matmul(dev(data), int(T.Q8_0), rows, cols, dev(x), n, out, add=True)
    assert np.allclose(out.copy_to_host(), want + 1, rtol=1e-5, atol=1e-5)


def test_matmul_refuses_bad_shapes():
    data = random_blocks(T.Q8_0, 4, 64, 0)
    with pytest.raises(ValueError, match="matmul"):
        K.matmul(dev(data), int(T.Q8_0), 4, 64, cu.device_array((2, 32), np.float32), 2,
                 cu.device_array((2, 4), np.float32))
    with pytest.raises(ValueError, match="no CUDA kernel"):
        K.check_weight("w", int(T.Q8_K), 4, 256)


# ----------------------------------------------------------------------------------------------
# float ops

def test_rmsnorm_rows_segments_and_add():
    from svdq_edge.arch.transformer import rmsnorm
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 48)).astype(np.float32) * 3
    w = rng.standard_normal(48).astype(np.float32)
    out = cu.to_device(np.zeros((5, 48), np.float32))
    K.rmsnorm(dev(x), dev(w), 1e-6, out, i0=1, n=3)
    got = out.copy_to_host()
    assert np.allclose(got[1:4], rmsnorm(x[1:4], w, 1e-6), rtol=1e-5, atol=1e-6)
    assert not got[0].any() and not got[4].any()
    # per-head segments (gemma's q/k norms), accumulated into the output
    wh = rng.standard_normal(16).astype(np.float32)
    out = dev(x)
    K.rmsnorm(dev(x), dev(wh), 1e-6, out, n=5, add=True)
    want = x + rmsnorm(x.reshape(5, 3, 16), wh, 1e-6).reshape(5, 48)
    assert np.allclose(out.copy_to_host(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("neox", [True, False])
def test_rope(neox):
    rope = RoPE(16, 10000.0, 64, neox)
    x = np.random.default_rng(3).standard_normal((4, 3, 16)).astype(np.float32)
    d = dev(x.reshape(4, 48))
    K.rope(d, 3, 3, 16, dev(rope.cos), dev(rope.sin), 17, neox)
    got = d.copy_to_host().reshape(4, 3, 16)
    assert np.allclose(got[:3], rope.apply(x[:3], 17), rtol=1e-6, atol=1e-6)
    assert np.array_equal(got[3], x[3])


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_act_mul(act):
    from svdq_edge.kernels import ref
    rng = np.random.default_rng(4)
    g = rng.standard_normal((3, 40)).astype(np.float32) * 4
    u = rng.standard_normal((3, 40)).astype(np.float32)
    d = dev(g)
    K.act_mul(d, dev(u), 2, K.ACT_GELU_TANH if act == "gelu_tanh" else K.ACT_SILU)
    want = ref.act_mul(g, u, act)
    got = d.copy_to_host()
    assert np.allclose(got[:2], want[:2], rtol=1e-5, atol=1e-6) and np.array_equal(got[2], g[2])


def test_store_f16_ring_rows():
    src = np.random.default_rng(5).standard_normal((6, 2 * 8)).astype(np.float32)
    dst = cu.to_device(np.zeros((2 + 5, 2, 8), np.float16))
    K.store_f16(dev(src), 5, 4, 2, 5, dst)                   # positions 4..8: rows 4, 5, 6, 2, 3
    got = dst.copy_to_host()
    rows = [4, 5, 6, 2, 3]
    assert np.array_equal(got[rows], src[:5].reshape(5, 2, 8).astype(np.float16))
    assert not got[:2].any()                                 # the fixed rows (sinks) untouched


# ----------------------------------------------------------------------------------------------
# attention over f16 K/V: scores, softmax, V accumulation (GQA, causal, sliding window, ring rows)

@pytest.mark.parametrize("window", [0, 5])
def test_attention_f16(window):
    from svdq_edge.kvcache.base import causal_softmax_attend
    H, KV, d, T, n = 4, 2, 16, 13, 3
    rng = np.random.default_rng(6)
    k = rng.standard_normal((T, KV, d)).astype(np.float16)
    v = rng.standard_normal((T, KV, d)).astype(np.float16)
    q = rng.standard_normal((n, H, d)).astype(np.float32)
    cap = 11 if window else T                          # a ring shorter than the context when windowed
    kc, vc = np.zeros((cap, KV, d), np.float16), np.zeros((cap, KV, d), np.float16)
    keep = range(T - cap, T)
    for p in keep:
        kc[p % cap], vc[p % cap] = k[p], v[p]
    q0 = T - n
    k_lo = max(0, q0 - window + 1) if window else 0
    s = cu.to_device(np.zeros((4, H, 32), np.float32))
    out = cu.to_device(np.zeros((n, H * d), np.float32))
    qd = dev(q.reshape(n, H * d))
    K.attention_scores_f16(qd, 0, n, H, q0, k_lo, window, dev(kc), 0, cap, s)
    K.softmax(s, n, H, q0, 0, k_lo, window, 0.25)
    K.attend_v_f16(s, n, H, q0, 0, k_lo, window, dev(vc), 0, cap, out)
    want = causal_softmax_attend(q, k.astype(np.float32), v.astype(np.float32), 0.25, q0, 0, window or None)
    assert np.allclose(out.copy_to_host().reshape(n, H, d), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# SVDq: project, quantize + pack (bit-exact), query projection, packed scores

WIDTHS = [np.array([8, 8, 4, 4, 4, 2, 2, 1, 1, 1]), np.array([4, 2, 2, 1, 1, 1]), np.array([1] * 5)]


@pytest.mark.parametrize("widths", WIDTHS, ids=["8421", "421", "1"])
def test_svdq_pack_bit_exact(widths):
    G, B, nf, r = 2, 16, 2, len(widths)
    rng = np.random.default_rng(r)
    z = (rng.standard_normal((nf, G, B, r)) * np.linspace(5, 0.1, r)).astype(np.float32)
    z[1, 1, :, -1] = 0.75                                   # a constant channel: scale 0, codes 0
    z[0, 1, 3, :] = 40.0                                    # an outlier token: clipped at 1 and 2 bits
    counts = svdq_ref.width_counts(widths)
    codes = K.alloc_codes(G, 4, counts, B)
    scale = cu.to_device(np.zeros((G, 4, r), np.float16))
    mn = cu.to_device(np.zeros((G, 4, r), np.float16))
    K.svdq_pack(dev(z), nf, counts, 1, codes, scale, mn)
    hs, hm = scale.copy_to_host(), mn.copy_to_host()
    hc = [c.copy_to_host() for c in codes]
    for f in range(nf):
        for g in range(G):
            packed, s, m = svdq_ref.quantize_block(z[f, g], widths)
            assert np.array_equal(hs[g, 1 + f].view(np.uint16), s.view(np.uint16))
            assert np.array_equal(hm[g, 1 + f].view(np.uint16), m.view(np.uint16))
            for c, p, n in zip(hc, packed, counts):
                assert np.array_equal(c[g, 1 + f, :n], p)


@pytest.mark.parametrize("per_head", [True, False])
def test_svdq_project(per_head):
    KV, d, B, S, capw, nf = 2, 8, 8, 2, 20, 2
    G, D = (KV, d) if per_head else (1, KV * d)
    r = 5
    rng = np.random.default_rng(8)
    kf = rng.standard_normal((S + capw, KV, d)).astype(np.float16)
    V = rng.standard_normal((G, D, r)).astype(np.float32)
    mu = rng.standard_normal((G, D)).astype(np.float32)
    p0 = 15                                                   # positions 15..30 wrap the ring
    z = cu.device_array((3, G, B, r), np.float32)
    K.svdq_project(dev(kf), S, capw, p0, nf, dev(V), dev(mu), z)
    rows = [S + (p - S) % capw for p in range(p0, p0 + nf * B)]
    k = kf[rows].astype(np.float32).reshape(nf, B, G, D)
    want = np.einsum("fbgd,gdr->fgbr", k - mu[None, None], V)
    assert np.allclose(z.copy_to_host()[:nf], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("widths", WIDTHS, ids=["8421", "421", "1"])
def test_svdq_scores_match_oracle(widths):
    nblk, B, r, m = 3, 16, len(widths), 5
    rng = np.random.default_rng(9)
    counts = svdq_ref.width_counts(widths)
    codes = [np.zeros((1, nblk, max(n, 1), B * w // 8), np.uint8) for w, n in zip(svdq_ref.PACK_WIDTHS, counts)]
    scale = np.zeros((1, nblk, r), np.float16)
    mn = np.zeros((1, nblk, r), np.float16)
    for b in range(nblk):
        p, s, mm = svdq_ref.quantize_block(rng.standard_normal((B, r)).astype(np.float32) * 2, widths)
        for c, pp, n in zip(codes, p, counts):
            c[0, b, :n] = pp
        scale[0, b], mn[0, b] = s, mm
    qt = rng.standard_normal((1, m, r)).astype(np.float32)
    base = rng.standard_normal((1, m)).astype(np.float32)
    S = 3
    s = cu.to_device(np.zeros((1, m, S + nblk * B), np.float32))
    K.svdq_scores(dev(qt), dev(base), 1, m, m, False, nblk, S, counts, [dev(c) for c in codes],
                  dev(scale), dev(mn), s)
    want = svdq_ref.score([c[0, :, :n] for c, n in zip(codes, counts)], scale[0], mn[0], widths, qt[0], B)
    got = s.copy_to_host()[0, :, S:]
    assert np.allclose(got, want + base[0][:, None], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("per_head", [True, False])
def test_svdq_qproj(per_head):
    H, KV, d, r, n = 4, 2, 8, 6, 2
    grp = H // KV
    G, D = (KV, d) if per_head else (1, KV * d)
    rng = np.random.default_rng(10)
    q = rng.standard_normal((n, H, d)).astype(np.float32)
    V = rng.standard_normal((G, D, r)).astype(np.float32)
    mu = rng.standard_normal((G, D)).astype(np.float32)
    qt = cu.device_array((2, H, r), np.float32)
    base = cu.device_array((2, H), np.float32)
    K.svdq_qproj(dev(q.reshape(n, H * d)), 0, n, H, grp, per_head, dev(V), dev(mu), qt, base)
    for h in range(H):
        g, o = (h // grp, 0) if per_head else (0, (h // grp) * d)
        assert np.allclose(qt.copy_to_host()[:, h], q[:, h] @ V[g, o:o + d], rtol=1e-5, atol=1e-5)
        assert np.allclose(base.copy_to_host()[:, h], q[:, h] @ mu[g, o:o + d], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# the GPU runner against the CPU path on tiny random models

ARCHS = {
    # arch: (n_embd, n_head, n_kv, head_dim, n_ff, n_layer); tiny, the simulator interprets every thread
    "llama": (32, 2, 1, 16, 256, 2),        # n_ff 256: room for K-quant blocks in ffn_down
    "qwen2": (32, 4, 2, 8, 64, 1),
    "gemma3": (32, 2, 1, 16, 32, 6),        # 6 layers: five sliding-window layers, one global
}
# a type per tensor, so the types the two real models use (and a few more) all run in the graph
TYPES = {"attn_q": T.Q5_0, "attn_k": T.Q8_0, "attn_v": T.Q4_0, "attn_output": T.F16,
         "ffn_gate": T.Q5_1, "ffn_up": T.Q4_1, "ffn_down": (T.Q4_K, T.Q6_K), "ffn_down_small": T.Q8_0}


def tiny_model(path, arch, vocab=48, window=6):
    E, H, KV, d, F, L = ARCHS[arch]
    w = GGUFWriter(str(path), arch)
    w.add_context_length(256)
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_key_length(d)
    w.add_value_length(d)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0 if arch != "gemma3" else 1e6)
    if arch == "gemma3":
        w.add_sliding_window(window)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    rng = np.random.default_rng(sorted(ARCHS).index(arch))

    def f32(name, shape, scale=1.0, mean=0.0):
        w.add_tensor(name, (mean + scale * rng.standard_normal(shape)).astype(np.float32))

    def q(name, rows, cols, qtype, seed):
        if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
            w.add_tensor(name, random_blocks(qtype, rows, cols, seed, scale_hi=0x10), raw_dtype=qtype)
        else:
            x = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
            w.add_tensor(name, np.ascontiguousarray(gguf_quantize(x, qtype).view(np.uint8)), raw_dtype=qtype)

    q("token_embd.weight", vocab, E, T.Q8_0, 1)
    f32("output_norm.weight", (E,), 0.1, 1.0)
    if arch != "gemma3":
        q("output.weight", vocab, E, T.Q5_0, 2)
    for i in range(L):
        p = f"blk.{i}."
        f32(p + "attn_norm.weight", (E,), 0.1, 1.0)
        f32(p + "ffn_norm.weight", (E,), 0.1, 1.0)
        q(p + "attn_q.weight", H * d, E, TYPES["attn_q"], 10 * i + 3)
        q(p + "attn_k.weight", KV * d, E, TYPES["attn_k"], 10 * i + 4)
        q(p + "attn_v.weight", KV * d, E, TYPES["attn_v"], 10 * i + 5)
        q(p + "attn_output.weight", E, H * d, TYPES["attn_output"], 10 * i + 6)
        q(p + "ffn_gate.weight", F, E, TYPES["ffn_gate"], 10 * i + 7)
        q(p + "ffn_up.weight", F, E, TYPES["ffn_up"], 10 * i + 8)
        q(p + "ffn_down.weight", E, F, TYPES["ffn_down"][i % 2] if F % 256 == 0 else TYPES["ffn_down_small"], 10 * i + 9)
        if arch == "qwen2":
            f32(p + "attn_q.bias", (H * d,), 0.3)
            f32(p + "attn_k.bias", (KV * d,), 0.3)
            f32(p + "attn_v.bias", (KV * d,), 0.3)
        if arch == "gemma3":
            f32(p + "attn_q_norm.weight", (d,), 0.1, 1.0)
            f32(p + "attn_k_norm.weight", (d,), 0.1, 1.0)
            f32(p + "post_attention_norm.weight", (E,), 0.1, 0.5)
            f32(p + "post_ffw_norm.weight", (E,), 0.1, 0.5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _caches(model, specs, ctk, cfg, bases):
    from svdq_edge.kvcache.dense import DenseCache
    from svdq_edge.kvcache.svdq import SVDqCache
    return [SVDqCache(s, bases[s.layer], cfg) if ctk == "svdq" and s.window is None else DenseCache(s)
            for s in specs]


# max |logit difference| / max |logit| allowed between the GPU runner (simulator) and the CPU path
# with the numpy backend (both float32 activations and f16 K/V; only summation order differs, and
# with it, rarely, an SVDq code at a rounding boundary). Measured: 5e-7 (qwen2, SVDq), 1.5e-6
# (llama, f16), 5e-5 (gemma3, SVDq + sliding windows).
LOGIT_RTOL = 2e-4


@pytest.mark.parametrize("arch,ctk,per_head", [("llama", "f16", True), ("qwen2", "svdq", True),
                                               ("qwen2", "svdq", False), ("gemma3", "svdq", True)])
def test_runner_matches_cpu(tmp_path, arch, ctk, per_head):
    from svdq_edge.arch.cuda_transformer import CudaTransformer
    from svdq_edge.arch.transformer import Transformer, load_weights
    from svdq_edge.config import args_from_gguf
    from svdq_edge.gguf_io import GGUFFile
    from svdq_edge.kvcache.base import CacheSpec
    from svdq_edge.kvcache.basis import compute_basis
    from svdq_edge.kvcache.dense import DenseCache
    from svdq_edge.kvcache.svdq_config import SVDqConfig
    g = GGUFFile(tiny_model(tmp_path / f"{arch}.gguf", arch))
    a = args_from_gguf(g)
    wts = load_weights(g, a)
    n_ctx = 64
    cpu = Transformer(a, wts, n_ctx)
    gpu = CudaTransformer(a, wts, n_ctx)

    def specs(m):
        return [CacheSpec(i, a.n_head, a.n_kv, a.head_dim, n_ctx, a.layer_window[i], m.layer_rope(i))
                for i in range(a.n_layer)]
    # SVDq bases from this model's own post-RoPE keys on a calibration sequence (as the factory does
    # for --svdq-rope post, the frame the GPU cache implements)
    cfg = SVDqConfig(bits=(8, 4, 2, 1, 1, 0, 0, 0), block=8, window=8, sinks=2, per_head=per_head, rope="post")
    bases = [None] * a.n_layer
    if ctk == "svdq":
        cal = Transformer(a, wts, 48)
        cal.set_caches([DenseCache(s, np.float32) for s in specs(cal)])
        keys = {}
        cal.forward(np.random.default_rng(0).integers(0, 48, 48),
                    hidden_hook=lambda i, k, v, q=None: keys.setdefault(i, k.copy()))
        for i in range(a.n_layer):
            if a.layer_window[i] is None:
                kr = cal.layer_rope(i).apply(keys[i], 0)
                bases[i] = compute_basis(kr if per_head else kr.reshape(48, 1, -1), cfg)
    cpu.set_caches(_caches(cpu, specs(cpu), ctk, cfg, bases))
    gpu.set_caches(_caches(gpu, specs(gpu), ctk, cfg, bases))
    # SVDq (sinks 2, block 8, window 8): the second prefill chunk flushes a block and scores it for
    # 8 queries at once; the first decode step flushes a second block. Dense caches: 2 tiles, 2 steps
    plan = [18, 8, 1, 1] if ctk == "svdq" else [10, 1, 1]
    ids = np.random.default_rng(1).integers(0, 48, sum(plan))
    chunks = np.split(ids, np.cumsum(plan)[:-1])
    worst = 0.0
    for c in chunks:
        want = cpu.forward(c, all_logits=len(c) > 1)
        got = gpu.forward(c, all_logits=len(c) > 1)
        assert got.shape == want.shape and np.all(np.isfinite(got))
        worst = max(worst, np.abs(got - want).max() / np.abs(want).max())
    print(f"worst relative logit difference {arch} {ctk}: {worst:.2e}")
    assert worst < LOGIT_RTOL, worst
    assert gpu.offset == cpu.offset == sum(plan)
    if ctk == "svdq":
        glob = [i for i in range(a.n_layer) if a.layer_window[i] is None]
        assert all(gpu.caches[i].nblk == cpu.caches[i].nblk == 2 for i in glob)   # packed tokens were scored
        assert all(gpu.caches[i].k_nbytes() == cpu.caches[i].k_nbytes() for i in glob)
    # a reset reuses the device buffers and reproduces the first logits
    first = gpu.caches[0]
    gpu.set_caches(_caches(gpu, specs(gpu), ctk, cfg, bases))
    assert gpu.caches[0] is first and gpu.offset == 0
    cpu.set_caches(_caches(cpu, specs(cpu), ctk, cfg, bases))
    a0, b0 = cpu.forward(ids[:2]), gpu.forward(ids[:2])
    assert np.abs(a0 - b0).max() / np.abs(a0).max() < LOGIT_RTOL
