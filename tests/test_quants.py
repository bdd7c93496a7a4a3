"""Dequantization bit-exact against gguf.quants; every backend's matmul against the numpy oracle."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from svdq_edge.kernels import ref
from svdq_edge.quants import LAYOUTS, row_bytes

QTYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.F16, T.BF16, T.F32]
FLOATS = (T.F16, T.BF16, T.F32)


class _CPath:
    """The C backend with one SIMD path forced (scalar, avx2, avx512, ...)."""

    def __init__(self, mod, path):
        self.mod, self.path = mod, path

    def matmul(self, *a):
        self.mod.set_path(self.path)
        try:
            self.mod.matmul(*a)
        finally:
            self.mod.set_path(None)

    def get_rows(self, *a):
        self.mod.set_path(self.path)
        try:
            self.mod.get_rows(*a)
        finally:
            self.mod.set_path(None)


def backends():
    out = [("numpy", ref)]
    from svdq_edge.kernels import cpu_numba
    out.append(("numba", cpu_numba))
    from svdq_edge.kernels import cpu_c          # must build here: the test machine has gcc
    out += [(f"c-{p}", _CPath(cpu_c, p)) for p in cpu_c.cpu_paths()]
    return out


def random_blocks(qtype, rows, cols, seed):
    """Random bit patterns with finite, moderate f16 scales (so products are comparable)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(rows, row_bytes(qtype, cols)), dtype=np.uint8)
    blk, nb = LAYOUTS[qtype]
    if qtype in FLOATS:
        return np.ascontiguousarray(gguf_quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)).view(np.uint8)
    b = data.reshape(-1, nb)
    # f16 fields: keep exponent bits in a sane range (bit patterns 0x2000..0x37ff ~ 1e-4..0.5)
    f16_offsets = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
                   T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}[qtype]
    for o in f16_offsets:
        b[:, o + 1] = 0x20 + (b[:, o + 1] % 0x18)
    return data


def real_tensor(path, name, rows=64):
    from svdq_edge.gguf_io import GGUFFile
    g = GGUFFile(path)
    t = g.tensors[name]
    w = g.weight(name, (t.shape[1], t.shape[0]))
    return w.data[:rows], w.qtype, w.cols


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_dequantize_bit_exact_random(qtype):
    data = random_blocks(qtype, 9, 512, int(qtype))
    ours = ref.dequantize(data, qtype)
    theirs = gguf_dequantize(data, qtype).astype(np.float32)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("qtype", [q for q in QTYPES if q not in FLOATS], ids=lambda q: q.name)
def test_dequantize_zero_blocks(qtype):
    data = np.zeros((3, row_bytes(qtype, 256)), np.uint8)
    assert np.array_equal(ref.dequantize(data, qtype), gguf_dequantize(data, qtype).astype(np.float32))


@pytest.mark.parametrize("model,name", [
    ("gemma", "blk.0.attn_q.weight"), ("gemma", "blk.0.attn_output.weight"), ("gemma", "blk.0.ffn_down.weight"),
    ("gemma", "token_embd.weight"), ("qwen", "blk.0.ffn_down.weight"), ("qwen", "blk.0.attn_v.weight"),
    ("qwen", "blk.3.ffn_up.weight")])
def test_dequantize_real_tensors(model, name, gemma_path, qwen_path):
    data, qtype, cols = real_tensor(gemma_path if model == "gemma" else qwen_path, name)
    assert np.array_equal(ref.dequantize(data, qtype), gguf_dequantize(np.ascontiguousarray(data), qtype).astype(np.float32))


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("n,rows", [(1, 37), (1, 1), (3, 5), (17, 37), (2, 129)])
def test_matmul_backends(qtype, n, rows):
    cols = 512
    data = random_blocks(qtype, rows, cols, 100 + int(qtype))
    x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
    exact = np.empty((n, rows), np.float32)
    ref.matmul(data, qtype, x, exact)
    q8 = ref.matmul_q8(data, qtype, x)
    # the size of the dot products' terms: sum_i |w_i x_i| (robust when outputs cancel to ~0)
    scale = (np.abs(x) @ np.abs(ref.dequantize(data, qtype)).T).max()
    for name, be in backends():
        out = np.full((n, rows), np.nan, np.float32)
        be.matmul(data, qtype, x, out)
        # float path (and BLAS prefill panels) vs float oracle: float32 rounding only
        err_f = np.abs(out - exact).max() / scale
        err_q = np.abs(out - q8).max() / scale
        # integer-dot path: equals the Q8 oracle up to summation order; the 8-bit activation
        # itself costs < 1% of the output scale against the float oracle
        assert min(err_f, err_q) < 1e-5, (name, err_f, err_q)
        assert err_f < 1.5e-2, (name, err_f)


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q5_0, T.Q4_K, T.Q6_K], ids=lambda q: q.name)
@pytest.mark.parametrize("n", [1, 3, 4, 5, 9, 12, 17, 34])
def test_native_int8_prefill_tiles(qtype, n):
    """The int8 kernels called directly (cpu_c.matmul may route prefill to BLAS) on every path, with
    token counts that hit the 8- and 4-token tiles and their per-token remainder, the row-group
    GEMM (Q5_0, and Q8_0 with VNNI: from 16 tokens, in thread chunks of at least 8 rows on avx2 and
    16 on avx512; 37 and 150 rows make chunks of 4-5 and 18-19 on 2 threads: groups and a tiled
    rest) with a partial 4-token group, and k not a multiple of 256 for the 32-value blocks (tails
    of 4 and 1 blocks): the Q8 oracle within 1e-5."""
    from svdq_edge.kernels import cpu_c
    for k, rows in [(k, r) for k in ([256, 896, 640, 224, 32] if LAYOUTS[qtype][0] == 32 else [256, 768])
                    for r in (37, 150)]:
        data = random_blocks(qtype, rows, k, 300 + int(qtype) + k)
        x = np.random.default_rng(n).standard_normal((n, k)).astype(np.float32)
        q8 = ref.matmul_q8(data, qtype, x)
        scale = (np.abs(x) @ np.abs(ref.dequantize(data, qtype)).T).max()
        for p in cpu_c.cpu_paths():
            out = np.full((n, rows), np.nan, np.float32)
            cpu_c.set_path(p)
            try:
                rc = cpu_c.lib.svdq_matmul(cpu_c._ptr(data, "unsigned char *"), rows, data.shape[1], int(qtype),
                                           cpu_c._ptr(x, "float *"), n, k, cpu_c._ptr(out, "float *"))
            finally:
                cpu_c.set_path(None)
            assert rc == 0, (p, k, rc)
            assert np.abs(out - q8).max() / scale < 1e-5, (p, k, np.abs(out - q8).max() / scale)


@pytest.mark.parametrize("src", [T.Q5_0, T.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 9, 17, 34])
def test_repacked_x4_matmul(src, n):
    """Q5_0 / Q8_0 repacked at load time (Q5_0X4 / Q8_0X4): the C repack equals the numpy oracle
    byte for byte and round-trips; its matmul on every path and with 1-3 threads (avx512's own
    kernels below 4 tokens, elsewhere and for prefill un-repacked rows through the plain kernels)
    and in a fused call beside a plain weight equals the Q8 oracle of the original blocks within
    1e-5; its dequantized rows are the original's, bit for bit, on every backend."""
    from svdq_edge.kernels import cpu_c
    from svdq_edge.quants import Q5_0X4, Q8_0X4
    to = {T.Q5_0: Q5_0X4, T.Q8_0: Q8_0X4}[src]
    for k, rows in [(128, 1), (640, 37), (896, 70), (1024, 150)]:
        data = random_blocks(src, rows, k, 900 + k + n + int(src))
        rp = ref.repack_x4(data, to)
        np.testing.assert_array_equal(ref.unrepack_x4(rp, to), data)
        got = cpu_c.repack(data, int(src), k) if cpu_c.lib.svdq_active_path() == cpu_c.PATHS["avx512"] else None
        out = np.empty_like(data)
        assert cpu_c.lib.svdq_repack(cpu_c._ptr(data, "unsigned char *"), rows, data.shape[1], int(src), k,
                                     cpu_c._ptr(out, "unsigned char *")) == to
        np.testing.assert_array_equal(out, rp)
        if got is not None:
            assert got[1] == to and np.array_equal(got[0], rp)
        x = np.random.default_rng(n).standard_normal((n, k)).astype(np.float32)
        q8 = ref.matmul_q8(data, src, x)
        scale = (np.abs(x) @ np.abs(ref.dequantize(data, src)).T).max()
        for p in cpu_c.cpu_paths():
            for nt in (1, 2, 3):
                res = np.full((n, rows), np.nan, np.float32)
                cpu_c.set_path(p)
                cpu_c.set_threads(nt)
                try:
                    rc = cpu_c.lib.svdq_matmul(cpu_c._ptr(rp, "unsigned char *"), rows, rp.shape[1], to,
                                               cpu_c._ptr(x, "float *"), n, k, cpu_c._ptr(res, "float *"))
                    fused = [np.full((n, rows), np.nan, np.float32), np.full((n, min(3, rows)), np.nan, np.float32)]
                    done = cpu_c.matmul_many([rp, data[:3]], [to, int(src)], x, fused)
                finally:
                    cpu_c.set_path(None)
                    cpu_c.set_threads(0)
                assert rc == 0, (p, k, rc)
                assert np.abs(res - q8).max() / scale < 1e-5, (p, nt, k, np.abs(res - q8).max() / scale)
                if done:
                    np.testing.assert_array_equal(fused[0], res, err_msg=f"{p} {nt} {k}")
                    assert np.abs(fused[1] - q8[:, :fused[1].shape[1]]).max() / scale < 1e-5
        want = ref.dequantize(data, src)
        ids = np.array([0, rows - 1, rows // 2], np.int64)
        for name, be in backends():
            o = np.empty((3, k), np.float32)
            be.get_rows(rp, to, ids, o)
            assert np.array_equal(o.view(np.uint32), want[ids].view(np.uint32)), name
    # refused: a type without a repacked layout, k not a multiple of 128, a row size that does not fit
    d = random_blocks(src, 4, 96, 1)
    o = np.empty_like(d)
    assert cpu_c.lib.svdq_repack(cpu_c._ptr(d, "unsigned char *"), 4, d.shape[1], int(src), 96,
                                 cpu_c._ptr(o, "unsigned char *")) == -1
    d = random_blocks(T.Q4_K, 4, 256, 1)
    assert cpu_c.lib.svdq_repack(cpu_c._ptr(d, "unsigned char *"), 4, d.shape[1], int(T.Q4_K), 256,
                                 cpu_c._ptr(np.empty_like(d), "unsigned char *")) == -1
    d = random_blocks(src, 4, 128, 1)
    assert cpu_c.lib.svdq_repack(cpu_c._ptr(d, "unsigned char *"), 4, d.shape[1] - 8, int(src), 128,
                                 cpu_c._ptr(np.empty_like(d), "unsigned char *")) == -2
    x = np.ones((1, 96), np.float32)        # repacked rows hold whole quads of 128 values: bad size
    assert cpu_c.lib.svdq_matmul(cpu_c._ptr(d, "unsigned char *"), 4, row_bytes(src, 96), to,
                                 cpu_c._ptr(x, "float *"), 1, 96, cpu_c._ptr(np.empty((1, 4), np.float32), "float *")) == -3


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_get_rows_exact(qtype):
    data = random_blocks(qtype, 21, 256, 7 + int(qtype))
    ids = np.array([0, 20, 5, 5, 13], np.int64)
    want = ref.dequantize(data[ids], qtype)
    for name, be in backends():
        out = np.empty((len(ids), 256), np.float32)
        be.get_rows(data, qtype, ids, out)
        assert np.array_equal(out.view(np.uint32), want.view(np.uint32)), name


def test_row_size_message():
    with pytest.raises(ValueError, match="row size 100 is not a multiple of Q4_K block size 256"):
        row_bytes(T.Q4_K, 100)


def test_native_rejects_bad_sizes():
    from svdq_edge.kernels import cpu_c
    data = random_blocks(T.Q4_K, 4, 256, 0)
    x = np.ones((1, 256), np.float32)
    out = np.empty((1, 4), np.float32)
    with pytest.raises(ValueError, match="row size does not match"):
        cpu_c.matmul(np.ascontiguousarray(data[:, :100]), int(T.Q4_K), x, out)   # wrong row bytes
    with pytest.raises(ValueError, match="unsupported"):
        cpu_c.matmul(data, 99, x, out)
    with pytest.raises(ValueError, match="out of range"):
        cpu_c.get_rows(data, int(T.Q4_K), np.array([4]), np.empty((1, 256), np.float32))
    with pytest.raises(ValueError, match="output must be"):
        cpu_c.matmul(data, int(T.Q4_K), x, np.empty((1, 3), np.float32))


def packed_blocks(rng, widths, nblk, B):
    """nblk random blocks of B tokens quantized by the oracle: codes per width, scale, min."""
    from svdq_edge.kernels import svdq_ref
    r = len(widths)
    codes = [np.zeros((nblk, n, B * w // 8), np.uint8) for w, n in zip(svdq_ref.PACK_WIDTHS, svdq_ref.width_counts(widths))]
    scale = np.zeros((nblk, r), np.float16)
    mn = np.zeros((nblk, r), np.float16)
    for b in range(nblk):
        p, s, m = svdq_ref.quantize_block(rng.standard_normal((B, r)).astype(np.float32), widths)
        for c, pp in zip(codes, p):
            c[b] = pp
        scale[b], mn[b] = s, m
    return codes, scale, mn


def test_native_latent_score_matches_oracle():
    from svdq_edge.kernels import cpu_c, svdq_ref
    rng = np.random.default_rng(0)
    widths = np.array([8, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1])
    r, B, nblk = len(widths), 64, 3
    codes, scale, mn = packed_blocks(rng, widths, nblk, B)
    # one projection for every token, or one per rotation block of 32 / 8 tokens (relative frame)
    for qt in (rng.standard_normal((4, r)), rng.standard_normal((6, 4, r)), rng.standard_normal((24, 5, r))):
        qt = qt.astype(np.float32)
        want = svdq_ref.score(codes, scale, mn, widths, qt, B)
        for p in cpu_c.cpu_paths():
            cpu_c.set_path(p)
            try:
                got = cpu_c.score(codes, scale, mn, widths, qt, B)
            finally:
                cpu_c.set_path(None)
            assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()), (p, qt.shape)
    with pytest.raises(ValueError, match="rotation blocks"):
        cpu_c.score(codes, scale, mn, widths, np.zeros((5, 4, r), np.float32), B)


# (H, KV, d, B, nblk, sinks, nwin, topk, rb): GQA and plain heads, d not a multiple of 8, no sinks
# or no window, a top-k cut, enough tokens (T = 1590) that softmax.V splits into chunks, and the
# relative frame (rb > 0: one query projection per rotation block of rb tokens); no packed block yet
ATTEND_CASES = [(14, 2, 64, 64, 3, 4, 37, 0, 0), (14, 2, 64, 64, 3, 4, 37, 10, 0), (4, 1, 256, 24, 2, 0, 0, 0, 0),
                (6, 3, 20, 8, 5, 2, 5, 7, 0), (1, 1, 8, 128, 1, 0, 1, 0, 0), (8, 1, 64, 128, 12, 4, 50, 300, 0),
                (14, 2, 64, 64, 3, 4, 37, 0, 32), (14, 2, 64, 128, 4, 4, 33, 40, 64), (4, 1, 256, 24, 2, 0, 0, 0, 8),
                (6, 3, 20, 8, 5, 2, 5, 7, 8), (8, 1, 64, 128, 12, 4, 50, 0, 128), (14, 2, 64, 64, 0, 4, 37, 0, 0),
                (14, 2, 64, 64, 0, 4, 37, 0, 32)]


@pytest.mark.parametrize("H,KV,d,B,nblk,sinks,nwin,topk,rb,vt,nr", [(*c, 1, 13) for c in ATTEND_CASES] + [
    (14, 2, 64, 64, 3, 4, 37, 10, 32, 2, 13), (14, 2, 64, 128, 4, 4, 33, 0, 64, 8, 13),
    (4, 1, 256, 24, 2, 0, 0, 0, 8, 2, 13), (8, 1, 64, 128, 12, 4, 50, 300, 128, 8, 13),
    (4, 1, 256, 128, 17, 4, 20, 300, 128, 2, 13),
    # latent widths whose projection tiles end inside the second and third 16 columns, or past one
    # 48-column tile; Gemma's shape (one KV head, 4 heads: two rotation blocks projected at once,
    # an odd count per thread) with its r = 136
    (4, 1, 256, 128, 5, 4, 20, 300, 128, 2, 136), (4, 1, 64, 32, 3, 0, 8, 0, 16, 1, 40),
    (2, 1, 32, 16, 7, 2, 3, 0, 8, 8, 61), (14, 2, 64, 64, 3, 4, 37, 10, 32, 2, 25)])
def test_native_latent_attend_matches_oracle(H, KV, d, B, nblk, sinks, nwin, topk, rb, vt, nr):
    """The one-call SVDq decode attention on every path against svdq_ref.decode_attend (float64);
    V as f16 (vt 1) or as GGML Q8_0 / Q4_0 rows (vt 8 / 2; the oracle reads gguf-py's dequantization)."""
    from svdq_edge.rope import RoPE
    from svdq_edge.kernels import cpu_c, svdq_ref
    rng = np.random.default_rng(H * 1000 + d + topk + nr)
    widths = np.array([8, 4, 4, 4, 2, 2, 2, 1, 1, 1, 1, 1, 1])
    if nr != 13:
        widths = np.array(sorted(rng.choice([8, 4, 2, 1], nr), reverse=True))
    r = len(widths)
    codes, scale, mn = packed_blocks(rng, widths, nblk, B)
    T = sinks + nblk * B + nwin
    q = (rng.standard_normal((H, d)) * 0.5).astype(np.float32)
    vmu = rng.standard_normal((KV, d, r + 1)).astype(np.float32)
    kf = rng.standard_normal((sinks + nwin + 3, KV, d)).astype(np.float16)       # spare rows past the window
    v = rng.standard_normal((T + 5, KV, d)).astype(np.float16)
    vbuf = v
    if vt != 1:
        from gguf.quants import dequantize, quantize
        vbuf = quantize(v.astype(np.float32).reshape(-1, d), vt).reshape(T + 5, KV, -1)
        v = dequantize(vbuf.reshape((T + 5) * KV, -1), vt).reshape(T + 5, KV, d)
    neox = rb % 16 == 0                                     # both pair layouts
    rope = RoPE(d, 10000.0, T + 3, neox)
    want = svdq_ref.decode_attend(q, vmu, codes, scale, mn, widths, B, kf, sinks, nwin, v, topk,
                                  rb, rope.cos, rope.sin, neox)
    scorer = cpu_c.PackedScorer(codes, scale, mn, B)
    rot = (rb, rope.cos, rope.sin, neox) if rb else None
    for p in cpu_c.cpu_paths():
        cpu_c.set_path(p)
        try:
            got = scorer.attend(q, vmu, kf, sinks, nwin, vbuf, topk, np.full(H * T + 7, np.nan, np.float32), rot, vt)
        finally:
            cpu_c.set_path(None)
        assert np.abs(got - want).max() < 1e-4 * np.abs(v).astype(np.float32).max(), (p, np.abs(got - want).max())


@pytest.mark.parametrize("qscale,vt", [(0.5, 1), (300.0, 2), (1e-6, 8)])
def test_native_latent_attend_topk_ties_and_ranges(qscale, vt):
    """Group top-k where the cut falls inside runs of equal scores (every packed block a copy of
    one block: each score appears nblk times) and over very wide or very narrow score ranges (the
    select bins by the values' own range): every path keeps what svdq_ref.decode_attend keeps."""
    from svdq_edge.kernels import cpu_c, svdq_ref
    rng = np.random.default_rng(7)
    widths = np.array([8, 4, 4, 2, 2, 1, 1, 1])
    H, KV, d, B, nblk, S, nwin = 8, 2, 64, 64, 24, 4, 20
    codes, scale, mn = packed_blocks(rng, widths, 1, B)
    codes = [np.repeat(c, nblk, axis=0) for c in codes]
    scale, mn = np.repeat(scale, nblk, axis=0), np.repeat(mn, nblk, axis=0)
    T = S + nblk * B + nwin
    q = (rng.standard_normal((H, d)) * qscale).astype(np.float32)
    vmu = rng.standard_normal((KV, d, len(widths) + 1)).astype(np.float32)
    kf = rng.standard_normal((S + nwin, KV, d)).astype(np.float16)
    v = rng.standard_normal((T, KV, d)).astype(np.float16)
    vbuf = v
    if vt != 1:
        from gguf.quants import dequantize, quantize
        vbuf = quantize(v.astype(np.float32).reshape(-1, d), vt).reshape(T, KV, -1)
        v = dequantize(vbuf.reshape(T * KV, -1), vt).reshape(T, KV, d)
    scorer = cpu_c.PackedScorer(codes, scale, mn, B)
    for topk in (1, 24, 48, 100, 1000):        # 24, 48: the cut at the end of a run
        want = svdq_ref.decode_attend(q, vmu, codes, scale, mn, widths, B, kf, S, nwin, v, topk)
        for p in cpu_c.cpu_paths():
            cpu_c.set_path(p)
            try:
                got = scorer.attend(q, vmu, kf, S, nwin, vbuf, topk, np.empty(H * T, np.float32), None, vt)
            finally:
                cpu_c.set_path(None)
            assert np.abs(got - want).max() < 1e-4 * np.abs(v).astype(np.float32).max(), (p, topk)


def test_native_latent_attend_refuses_bad_sizes():
    from svdq_edge.kernels import cpu_c
    rng = np.random.default_rng(3)
    codes, scale, mn = packed_blocks(rng, np.array([4, 2, 1]), 2, 16)
    scorer = cpu_c.PackedScorer(codes, scale, mn, 16)
    q = np.zeros((4, 8), np.float32)
    kf = np.zeros((8, 2, 8), np.float16)
    v = np.zeros((40, 2, 8), np.float16)
    ok = dict(vmu=np.zeros((2, 8, 4), np.float32), kf=kf, sinks=2, nwin=4, v=v, topk=0, scores=np.zeros(4 * 38, np.float32))
    scorer.attend(q, **ok)
    for bad in (dict(vmu=np.zeros((2, 8, 5), np.float32)), dict(v=v[:37]), dict(nwin=7),
                dict(scores=np.zeros(4 * 38 - 1, np.float32)), dict(kf=kf.astype(np.float32))):
        with pytest.raises(ValueError, match="latent attend"):
            scorer.attend(q, **{**ok, **bad})
    # the C entry point itself refuses what the wrapper would not pass: GQA that does not divide
    from svdq_edge.rope import RoPE
    rope = RoPE(8, 10000.0, 38, True)
    with pytest.raises(ValueError, match="RoPE tables"):
        scorer.attend(q, **ok, rot=(8, rope.cos[:, :3].copy(), rope.sin[:, :3].copy(), True))

    def raw(H=4, rb=0, n_ctx=38, vtype=1):
        return cpu_c.lib.svdq_latent_attend(
            cpu_c._ptr(q, "float *"), H, 2, 8, cpu_c._ptr(ok["vmu"], "float *"), *scorer._args, 16,
            cpu_c._ptr(kf, "unsigned short *"), 2, 4, cpu_c._ptr(v, "unsigned char *"), vtype, 0,
            cpu_c._ptr(rope.cos, "float *"), cpu_c._ptr(rope.sin, "float *"), n_ctx, rb, 1,
            cpu_c._ptr(ok["scores"], "float *"), cpu_c._ptr(np.zeros((4, 8), np.float32), "float *"))
    assert raw() == 0 and raw(rb=8) == 0
    # the C entry point itself refuses what the wrapper would not pass: GQA that does not divide,
    # a rotation block that does not divide the block, RoPE tables shorter than the packed tokens,
    # a V type it does not read, quantized V rows of d = 8 (not whole blocks of 32)
    assert raw(H=3) == -3 and raw(rb=12) == -3 and raw(rb=32) == -3 and raw(rb=8, n_ctx=20) == -3
    assert raw(vtype=12) == -1 and raw(vtype=2) == -2 and raw(vtype=8) == -2
    with pytest.raises(ValueError, match="latent attend"):                 # wrong row bytes for Q4_0
        scorer.attend(q, **{**ok, "v": np.zeros((40, 2, 18), np.uint8)}, vtype=2)


@pytest.mark.parametrize("qtype", [8, 2])
def test_native_quantize_rows_equals_gguf(qtype):
    """V rows quantized to Q8_0 / Q4_0 in C: byte for byte what gguf-py's quantizer writes, including
    all-zero blocks, ties at .5, blocks whose largest |x| is negative, and values past half's range
    and below its normal range (the f16 block scale)."""
    from gguf.quants import quantize
    from svdq_edge.kernels import cpu_c
    rng = np.random.default_rng(qtype)
    x = (rng.standard_normal((37, 96)) * rng.choice([1e-6, 0.5, 3.0, 1e3], (37, 1))).astype(np.float32)
    x[0] = 0.0
    x[1, :32] = np.arange(32) * 0.5 - 8.0                                  # exact halves after scaling
    x[2, :32] = -np.abs(x[2, :32])                                         # negative extreme
    x[3] *= 1e5                                                            # block scale overflows f16
    x[4] *= 1e-8                                                           # subnormal f16 scales
    with np.errstate(over="ignore"):
        want = quantize(x, qtype)
    assert np.array_equal(cpu_c.quantize_rows(x, qtype), want)
    with pytest.raises(ValueError, match="blocks of 32"):
        cpu_c.quantize_rows(x[:, :40], qtype)
    with pytest.raises(ValueError, match="quantize_rows: unsupported"):
        cpu_c.quantize_rows(np.zeros((2, 256), np.float32), 12)           # Q4_K: not a V row type


@pytest.mark.parametrize("n,heads,d", [(1, 14, 64), (3, 4, 256), (5, 3, 10), (2, 1, 2)])
def test_native_small_ops_match_numpy(n, heads, d):
    """rmsnorm, the gated activations and RoPE (both pair layouts) in C against ref.py."""
    from svdq_edge.kernels import cpu_c
    from svdq_edge.rope import RoPE
    rng = np.random.default_rng(n * 100 + d)
    x = (rng.standard_normal((n, heads, d)) * 3).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    assert np.allclose(cpu_c.rmsnorm(x, w, 1e-6), ref.rmsnorm(x, w, 1e-6), rtol=1e-5, atol=1e-6 * np.abs(w).max())
    g, u = x.reshape(n, -1).copy(), (x.reshape(n, -1)[:, ::-1] + 1).copy()
    g[0, :2] = (-100.0, 100.0)                                           # the exp's clamped ends
    for act in ref.ACTS:
        with np.errstate(over="ignore"):                                 # numpy's exp(100) in float32
            want = ref.act_mul(g, u, act)
        for p in cpu_c.cpu_paths():
            cpu_c.set_path(p)
            try:
                got = cpu_c.act_mul(g, u, act)
            finally:
                cpu_c.set_path(None)
            assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()), (act, p)
    for neox in (True, False):
        rp = RoPE(d, 10000.0, 64, neox)
        want = ref.rope(x, rp.cos, rp.sin, 60 - n, neox)
        assert np.allclose(cpu_c.rope(x, rp.cos, rp.sin, 60 - n, neox), want, rtol=1e-5, atol=1e-5 * np.abs(x).max())
    with pytest.raises(ValueError, match="rope"):
        cpu_c.rope(x, rp.cos, rp.sin, 64 - n + 1, True)                  # past the table: refused in C


@pytest.mark.parametrize("n", [1, 3])
def test_matmul_many_equals_separate_matmuls(n):
    """q/k/v and gate/up in one call (x quantized once, one parallel region) give bit for bit what
    one matmul per weight gives, on every path, for mixed types and row counts; float weights and
    prefill batches fall back to separate calls."""
    from svdq_edge import kernels
    from svdq_edge.kernels import QWeight, cpu_c
    if kernels.backend_name() != "c":
        pytest.skip("the fused call is in the C backend")
    rng = np.random.default_rng(n)
    ws = [QWeight(f"w{i}", int(t), r, 256, random_blocks(t, r, 256, 10 + i))
          for i, (t, r) in enumerate([(T.Q4_K, 40), (T.Q6_K, 8), (T.Q5_0, 13), (T.Q8_0, 1)])]
    x = rng.standard_normal((n, 256)).astype(np.float32)
    for p in cpu_c.cpu_paths():
        cpu_c.set_path(p)
        try:
            for group in (ws, ws[:2], ws[2:3]):
                got = kernels.matmul_many(tuple(group), x)
                for w, g in zip(group, got):
                    np.testing.assert_array_equal(g, kernels.matmul(w, x), err_msg=f"{p} {w.name}")
        finally:
            cpu_c.set_path(None)
    f = QWeight("f", int(T.F16), 5, 256, rng.standard_normal((5, 256)).astype(np.float16).view(np.uint8))
    assert not cpu_c.matmul_many([f.data], [f.qtype], x, [np.empty((n, 5), np.float32)])
    np.testing.assert_array_equal(kernels.matmul_many((ws[0], f), x)[1], kernels.matmul(f, x))
    with pytest.raises(ValueError, match="columns"):
        kernels.matmul_many((ws[0],), x[:, :128])
    # the C entry point refuses a row size that does not match its type before touching memory
    with pytest.raises(ValueError, match="row size"):
        cpu_c.matmul_many([np.ascontiguousarray(ws[0].data[:, :100])], [ws[0].qtype], x, [np.empty((n, 40), np.float32)])


@pytest.mark.parametrize("n,H,KV,T,p0,P,k", [(5, 14, 2, 700, 4, 640, 100), (3, 8, 1, 300, 0, 300, 1),
                                             (4, 6, 3, 90, 2, 80, 79), (2, 4, 2, 2000, 4, 1900, 37)])
def test_native_topk_mask_matches_oracle(n, H, KV, T, p0, P, k):
    """Prefill token sparsity in C on every path against svdq_ref.topk_group_mask: causal -inf in the
    window, one head fully masked, and runs of equal scores (ties at the cut are all kept)."""
    from svdq_edge.kernels import cpu_c, svdq_ref
    rng = np.random.default_rng(T + k)
    s = (rng.standard_normal((n, H, T)) * 3).astype(np.float32)
    s[:, :, p0:p0 + P:3] = np.round(s[:, :, p0:p0 + P:3])        # ties
    s[:, :, p0 + P + 1:] = -np.inf                             # window masked for every query
    s[0, 1] = -np.inf                                          # a head with nothing to attend
    want = s.copy()
    svdq_ref.topk_group_mask(want, p0, P, H // KV, k)
    for p in cpu_c.cpu_paths():
        cpu_c.set_path(p)
        try:
            got = s.copy()
            cpu_c.topk_group_mask(got, p0, P, H // KV, k)
        finally:
            cpu_c.set_path(None)
        assert np.array_equal(got, want), (p, int((got != want).sum()))
    with pytest.raises(ValueError, match="do not match"):
        cpu_c.topk_group_mask(s, p0, T - p0 + 1, H // KV, k)     # packed range past the end


@pytest.mark.parametrize("vtype", [T.F16, T.Q8_0, T.Q4_0])
@pytest.mark.parametrize("n,H,KV,Tn,p0,P,k", [(5, 14, 2, 700, 4, 640, 100), (3, 8, 1, 300, 0, 300, 0),
                                             (4, 6, 3, 90, 2, 80, 79), (2, 4, 2, 2000, 4, 1900, 37),
                                             (1, 4, 1, 5000, 4, 4900, 300), (1, 8, 2, 3000, 0, 2990, 50)])
def test_batch_softmax_av_matches_oracle(n, H, KV, Tn, p0, P, k, vtype):
    """A prefill pass's softmax.V (scores per KV head, f16 or Q8_0 / Q4_0 V rows, top-k) in C on every
    path and through the numpy fallback, against top-k masking by svdq_ref and a float64 softmax over
    V dequantized by gguf.quants: causal -inf in the window, one head fully masked (zero output).
    One query with fewer KV head groups than threads splits each group's top-k over the threads
    (topk_group_split): run with 1, 2 and 3 threads."""
    from svdq_edge import kernels
    from svdq_edge.kernels import cpu_c, svdq_ref
    rng = np.random.default_rng(Tn + k + int(vtype))
    d, g = 64, H // KV
    s = (rng.standard_normal((n, H, Tn)) * 3).astype(np.float32)
    s[:, :, p0:p0 + P:3] = np.round(s[:, :, p0:p0 + P:3])        # ties
    s[1:, :, p0 + P + 1:] = -np.inf                            # causal: later window tokens hidden
    s[0, 1] = -np.inf                                          # a head with nothing to attend
    vf = rng.standard_normal((Tn * KV, d)).astype(np.float32)
    rows = np.ascontiguousarray(gguf_quantize(vf, vtype)).view(np.uint8 if vtype != T.F16 else np.float16)
    v = rows.reshape(Tn, KV, -1)                                              # (Tn, KV, d) f16 or (Tn, KV, bytes)
    vd = gguf_dequantize(rows.view(np.uint8), vtype).reshape(Tn, KV, d).astype(np.float64)
    m = s.copy()
    svdq_ref.topk_group_mask(m, p0, P, g, k)
    m64 = m.astype(np.float64)
    mx = m64.max(axis=2, keepdims=True)
    w = np.exp(m64 - np.where(np.isfinite(mx), mx, 0.0))                     # (n, H, Tn); masked rows all 0
    w /= np.maximum(w.sum(axis=2, keepdims=True), 1e-300)
    want = np.einsum("nkgt,tkd->nkgd", w.reshape(n, KV, g, Tn), vd).reshape(n, H, d)
    kvmajor = np.ascontiguousarray(s.reshape(n, KV, g, Tn).transpose(1, 0, 2, 3))   # (KV, n, g, Tn)
    tol = 1e-4 * np.abs(vd).max()
    for nt in ((1, 2, 3) if n == 1 else (0,)):
        cpu_c.set_threads(nt)
        for p in cpu_c.cpu_paths():
            cpu_c.set_path(p)
            try:
                got = cpu_c.softmax_av(kvmajor.copy(), v, int(vtype), p0, P, k)
            finally:
                cpu_c.set_path(None)
                cpu_c.set_threads(0)
            assert np.abs(got - want).max() < tol, (p, nt)
    was = kernels.backend_name()
    kernels.use_backend("numpy")
    try:
        got = kernels.softmax_av(kvmajor.copy(), v, int(vtype), p0, P, k)
    finally:
        kernels.use_backend(was)
    assert np.abs(got - want).max() < tol
    with pytest.raises(ValueError, match="do not match"):
        cpu_c.softmax_av(kvmajor, v[:-1], int(vtype), p0, P, k)
    with pytest.raises(ValueError, match="softmax_av: bad size"):
        cpu_c.softmax_av(kvmajor, v, int(vtype), p0, Tn - p0 + 1, k)          # packed range past the end
