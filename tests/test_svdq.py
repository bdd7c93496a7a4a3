"""SVDq K cache: bit-exact packing, compressed-domain scores against the oracle, attention against
the dense cache within a bits-dependent tolerance, honest accounting, option validation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svdq_edge import kernels
from svdq_edge.kernels import svdq_numba, svdq_ref
from dataclasses import replace

from svdq_edge.kvcache.base import CacheSpec, causal_softmax_attend
from svdq_edge.kvcache.basis import compute_basis, fit_widths, query_moment
from svdq_edge.kvcache.dense import DenseCache
from svdq_edge.kvcache.svdq import SVDqCache
from svdq_edge.kvcache.svdq_config import PRESETS, SVDqConfig, parse_bits
from svdq_edge.rope import RoPE, block_centers


@settings(max_examples=60, deadline=None)
@given(w=st.sampled_from([1, 2, 4, 8]), n=st.integers(1, 9), blocks=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_pack_unpack_roundtrip(w, n, blocks, seed):
    B = 8 * blocks
    codes = np.random.default_rng(seed).integers(0, 2 ** w, size=(n, B), dtype=np.uint8)
    packed = svdq_ref.pack(codes, w)
    assert packed.shape == (n, B * w // 8)
    assert np.array_equal(svdq_ref.unpack(packed, w, B), codes)


def test_pack_layout_lsb_first():
    # token t of a 2-bit channel sits at byte t//4, bits 2*(t%4)
    codes = np.array([[1, 2, 3, 0, 3, 3, 3, 3]], np.uint8)
    assert svdq_ref.pack(codes, 2).tolist() == [[1 | 2 << 2 | 3 << 4, 0xFF]]


def _packed_blocks(widths, nblk, B, seed):
    rng = np.random.default_rng(seed)
    r = len(widths)
    codes = [np.zeros((nblk, n, B * w // 8), np.uint8) for w, n in zip(svdq_ref.PACK_WIDTHS, svdq_ref.width_counts(widths))]
    scale = np.zeros((nblk, r), np.float16)
    mn = np.zeros((nblk, r), np.float16)
    for b in range(nblk):
        z = (rng.standard_normal((B, r)) * np.linspace(4, 0.2, r)).astype(np.float32)
        p, s, m = svdq_ref.quantize_block(z, widths)
        for c, pp in zip(codes, p):
            c[b] = pp
        scale[b], mn[b] = s, m
    return codes, scale, mn


@pytest.mark.parametrize("widths", [[8] * 4, [4] * 3 + [2] * 2 + [1] * 3, [8, 8, 4, 4, 4, 2, 2, 1, 1, 1, 1], [1] * 5, [2] * 7])
def test_score_numba_matches_oracle(widths):
    widths = np.array(widths)
    codes, scale, mn = _packed_blocks(widths, 4, 64, 1)
    rng = np.random.default_rng(2)
    # one projection for all tokens, or one per rotation block of 32 / 8 tokens (relative frame)
    for shape in ((5, len(widths)), (8, 5, len(widths)), (32, 3, len(widths))):
        qt = rng.standard_normal(shape).astype(np.float32)
        ref = svdq_ref.score(codes, scale, mn, widths, qt, 64)
        got = svdq_numba.score(codes, scale, mn, widths, qt, 64)
        assert np.allclose(got, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max()), shape


@pytest.mark.parametrize("widths", [[8] * 4, [4] * 3 + [2] * 2 + [1] * 3, [8, 8, 4, 4, 4, 2, 2, 1, 1, 1, 1]])
def test_batched_scores_dequantize_every_block_like_the_oracle(widths):
    """Prefill batches (>= BATCH_QUERIES queries) score through the vectorized latent dequant and
    one matmul: bit-exact latent values, scores to float32 rounding."""
    from svdq_edge import kernels
    widths = np.array(widths)
    codes, scale, mn = _packed_blocks(widths, 5, 64, 4)
    z = svdq_ref.dequantize_all(codes, scale, mn, 64)
    for b in range(5):
        np.testing.assert_array_equal(z[b * 64:(b + 1) * 64],
                                      svdq_ref.dequantize_block([c[b] for c in codes], scale[b], mn[b], widths, 64))
    qt = np.random.default_rng(2).standard_normal((kernels.BATCH_QUERIES + 3, len(widths))).astype(np.float32)
    ref = svdq_ref.score(codes, scale, mn, widths, qt, 64)
    got = kernels.svdq_score(codes, scale, mn, widths, qt, 64)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())



@pytest.mark.parametrize("H,KV,d", [(4, 1, 256), (8, 2, 64), (7, 1, 64), (6, 3, 48), (3, 1, 20)])
@pytest.mark.parametrize("T", [1, 7, 129, 700])
def test_one_call_decode_attention_matches_reference(H, KV, d, T):
    """cpu_c.attend_f16 (a decode query's attention in one native call: scores, softmax and V per
    token chunk on each thread, merged) on every C path, with 1 and 2 threads, against the numpy
    oracle; shapes take the zmm and ymm tiles and the plain loops (d not a multiple of 8); and its
    size check."""
    from svdq_edge.kernels import cpu_c
    rng = np.random.default_rng(T * d + H)
    q = rng.standard_normal((1, H, d)).astype(np.float32)
    k = rng.standard_normal((T, KV, d)).astype(np.float16)
    v = rng.standard_normal((T, KV, d)).astype(np.float16)
    ref = causal_softmax_attend(0.2 * q, k.astype(np.float32), v.astype(np.float32), 1.0, T - 1, 0, None)
    try:
        for nt in (1, 2):
            cpu_c.set_threads(nt)
            for p in cpu_c.cpu_paths():
                cpu_c.set_path(p)
                got = cpu_c.attend_f16(0.2 * q, k, v)
                np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=f"{p} threads {nt}")
    finally:
        cpu_c.set_path(None)
        cpu_c.set_threads(0)
    with pytest.raises(ValueError):
        cpu_c.attend_f16(q, k[:, :, : d // 2], v)


@pytest.mark.parametrize("n,T,window,back", [(16, 16, None, 0), (40, 300, None, 0), (33, 100, 48, 0), (64, 64, 32, 0),
                                             (1, 100, 48, 0), (1, 30, 48, 0), (1, 30, None, 0), (1, 30, None, 5),
                                             (3, 40, 16, 2)])
def test_batched_attention_matches_reference(n, T, window, back):
    """The BLAS prefill attention (causal corner mask, sliding window) and the few-query native path
    (decode: a mask only where a key is out of the window or after the query; back > 0 puts the
    queries before the last keys) against the numpy oracle."""
    from svdq_edge import kernels
    rng = np.random.default_rng(n + T)
    H, KV, d = 6, 2, 16
    q = rng.standard_normal((n, H, d)).astype(np.float32)
    k = rng.standard_normal((T, KV, d)).astype(np.float16)
    v = rng.standard_normal((T, KV, d)).astype(np.float16)
    q0, k0 = 500 + T - n - back, 500
    ref = causal_softmax_attend(q, k.astype(np.float32), v.astype(np.float32), 0.3, q0, k0, window)
    got = kernels.attention_f16(q, k, v, 0.3, q0, k0, window)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # the same through the scores entry point the SVDq cache uses
    s = np.einsum("nkgd,tkd->nkgt", (0.3 * q).reshape(n, KV, H // KV, d), k.astype(np.float32)).reshape(n, H, T)
    qp, kp = q0 + np.arange(n)[:, None], k0 + np.arange(T)[None, :]
    mask = (kp > qp) | ((kp <= qp - window) if window else False)
    s[np.broadcast_to(mask[:, None, :], s.shape)] = -np.inf
    np.testing.assert_allclose(kernels.softmax_av_f16(s, v), ref, rtol=1e-4, atol=1e-5)


def test_quantize_error_bounded_by_half_step():
    widths = np.array([8, 4, 2, 1])
    z = np.random.default_rng(3).standard_normal((64, 4)).astype(np.float32)
    p, s, m = svdq_ref.quantize_block(z, widths)
    back = svdq_ref.dequantize_block(p, s, m, widths, 64)
    step = s.astype(np.float32)
    lo = m.astype(np.float32)
    hi = lo + step * (2.0 ** widths - 1)
    tol = 2e-3 * np.abs(z).max()
    inside = (z >= lo - tol) & (z <= hi + tol)
    err = np.abs(back - z)
    # inside the (clipped) range: at most half a step; outside: coded as the nearest range end
    assert np.all(err[inside] <= (0.5 * step[None, :] * 1.01 + tol).repeat(64, 0)[inside])
    assert np.allclose(back[~inside], np.clip(z, lo, hi)[~inside], atol=tol)
    assert inside[:, 0].all()                      # 8 bits: min/max, nothing clipped


def test_constant_channels_are_exact():
    """A channel constant over the block (zero spread) codes exactly at every width, no NaN."""
    widths = np.array([8, 4, 2, 1])
    z = np.tile(np.array([1.5, -2.25, 0.75, 3.0], np.float32), (64, 1))
    p, s, m = svdq_ref.quantize_block(z, widths)
    back = svdq_ref.dequantize_block(p, s, m, widths, 64)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(m))
    assert np.array_equal(back, z)


def synthetic_keys(T, KV, d, seed, decay=0.9):
    """Keys with a fast-decaying spectrum and a nonzero mean, like real attention keys."""
    rng = np.random.default_rng(seed)
    out = np.empty((T, KV, d), np.float32)
    for g in range(KV):
        basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
        lat = rng.standard_normal((T, d)) * (3.0 * decay ** np.arange(d))
        out[:, g] = lat @ basis.T + rng.standard_normal(d) * 2
    return out


def _run(cache, keys, vals, qs, chunks):
    outs, pos = [], 0
    for n in chunks:
        cache.append(keys[pos:pos + n], vals[pos:pos + n])
        outs.append(cache.attend(qs[pos:pos + n], 0.125))
        pos += n
    return np.concatenate(outs)


def frame_keys(keys, rope, cfg):
    """Pre-RoPE keys (T, KV, d) at positions 0.. -> the frame cfg stores them in (calibration)."""
    if cfg.rope == "pre":
        return keys
    if cfg.rope == "post":
        return rope.apply(keys, 0)
    t = np.arange(keys.shape[0])
    return rope.apply_at(keys, t - block_centers(0, keys.shape[0], cfg.rb, 0))


@pytest.mark.parametrize("shape", [(14, 2, 64), (4, 1, 256)], ids=["qwen-like", "gemma-like"])
@pytest.mark.parametrize("bits,tol", [((8,) * 8, 0.02), ((8, 4, 2, 1, 1, 0, 0, 0), 0.25)])
@pytest.mark.parametrize("frame,rb,per_head", [("post", 64, True), ("pre", 64, True), ("post", 64, False),
                                               ("relative", 64, False), ("relative", 32, False),
                                               ("relative", 16, True)])
def test_attend_close_to_dense(shape, bits, tol, frame, rb, per_head):
    H, KV, d = shape
    T = 400
    rope = RoPE(d, 10000.0, 1024, True)
    keys = synthetic_keys(T, KV, d, 0)
    vals = np.random.default_rng(1).standard_normal((T, KV, d)).astype(np.float32)
    qs = np.random.default_rng(2).standard_normal((T, H, d)).astype(np.float32) * 0.3
    cfg = SVDqConfig(bits=bits, window=64, block=64, sinks=4, rope=frame, rot_block=rb, per_head=per_head)
    cfg.validate()
    calib = frame_keys(keys, rope, cfg)
    calib = calib if per_head else calib.reshape(T, 1, -1)
    basis = compute_basis(calib, cfg)
    spec = CacheSpec(0, H, KV, d, 1024, None, rope)
    chunks = [100, 37] + [1] * 40 + [200, 1, 1, 1, 20]
    dense = _run(DenseCache(spec, np.float32), keys, vals, qs, chunks)
    svdq_cache = SVDqCache(spec, basis, cfg)
    got = _run(svdq_cache, keys, vals, qs, chunks)
    assert svdq_cache.nblk > 0                              # packed blocks were really scored
    err = np.abs(got - dense).max() / np.abs(dense).max()
    assert err < tol, err


def test_topk_all_tokens_equals_no_sparsity():
    H, KV, d, T = 4, 1, 64, 300
    rope = RoPE(d, 10000.0, 512, True)
    keys = synthetic_keys(T, KV, d, 5)
    vals = np.random.default_rng(6).standard_normal((T, KV, d)).astype(np.float32)
    qs = np.random.default_rng(7).standard_normal((T, H, d)).astype(np.float32)
    base = SVDqConfig(bits=(8, 4, 2, 1, 1, 0, 0, 0))
    basis = compute_basis(rope.apply(keys, 0), base)
    spec = CacheSpec(0, H, KV, d, 512, None, rope)
    a = _run(SVDqCache(spec, basis, base), keys, vals, qs, [250] + [1] * 50)
    b = _run(SVDqCache(spec, basis, SVDqConfig(bits=base.bits, topk=10**6)), keys, vals, qs, [250] + [1] * 50)
    c = _run(SVDqCache(spec, basis, SVDqConfig(bits=base.bits, topk=8)), keys, vals, qs, [250] + [1] * 50)
    assert np.allclose(a, b, atol=1e-5)
    assert not np.allclose(a[-1], c[-1], atol=1e-5)         # a real cut changes the output


@pytest.mark.parametrize("topk,frame,ctv", [(None, "post", "f16"), (20, "post", "f16"), (0.25, "post", "f16"),
                                            (None, "relative", "f16"), (20, "relative", "f16"),
                                            (20, "relative", "q4_0"), (None, "post", "q8_0")])
def test_one_call_decode_matches_the_composed_path(topk, frame, ctv):
    """Decode steps of a per-layer SVDq cache through the native one-call attention (window, sinks,
    flushes in between, top-k, V as f16 or Q8_0 / Q4_0 rows) give what the step-by-step path
    (scores, top-k, softmax.V over dequantized V) gives."""
    from svdq_edge import kernels
    if kernels.backend_name() != "c":
        pytest.skip("the one-call decode attention is a C kernel")
    H, KV, d, T = 14, 2, 64, 700
    rope = RoPE(d, 10000.0, 1024, True)
    keys = synthetic_keys(T, KV, d, 11)
    vals = np.random.default_rng(12).standard_normal((T, KV, d)).astype(np.float32)
    qs = np.random.default_rng(13).standard_normal((T, H, d)).astype(np.float32) * 0.3
    cfg = SVDqConfig(bits=(8, 4, 2, 1, 1, 0, 0, 0), window=32, block=64, sinks=4, topk=topk, rope=frame,
                     rot_block=32)
    basis = compute_basis(frame_keys(keys, rope, cfg).reshape(T, 1, -1), cfg)
    cache = SVDqCache(CacheSpec(0, H, KV, d, 1024, None, rope), basis, cfg, ctv)
    cache.append(keys[:300], vals[:300])
    fused = ties = 0
    for t in range(300, T):
        cache.append(keys[t:t + 1], vals[t:t + 1])
        got = cache.attend(qs[t:t + 1], 0.125)
        run = cache._decode_scorer()
        fast, run.attend = run.attend, None
        want = cache.attend(qs[t:t + 1], 0.125)                     # the composed path
        run.attend = fast
        fused += fast is not None
        k = cache._topk(cache.nblk * cache.B)
        if k:
            # two packed tokens tied at the k-th place of their group's ranking (same codes) may be
            # split either way by float rounding in the two paths: such steps are not compared
            sc = cache._packed_scores(qs[t:t + 1] * np.float32(0.125),
                                      np.empty((1, H, cache.nblk * cache.B), np.float32))[0]
            u = (sc - sc.max(axis=1, keepdims=True)).reshape(KV, H // KV, -1).max(axis=1)    # (KV, P)
            srt = -np.sort(-u, axis=1)
            if (srt[:, k - 1] - srt[:, k]).min() < 1e-5 * np.abs(srt).max():
                ties += 1
                continue
        assert np.abs(got - want).max() < 1e-5 * np.abs(vals).max(), t
    assert fused == T - 300 and cache.nblk > 5 and ties < (T - 300) // 4
    v_bits = {"f16": 16, "q8_0": 8.5, "q4_0": 4.5}[ctv]
    assert cache.nbytes() == cache.k_nbytes() + T * KV * d * v_bits / 8


@pytest.mark.parametrize("frame", ["post", "relative"])
def test_prefill_scores_of_rebuilt_keys_equal_latent_scores(frame):
    """A prefill chunk scores packed tokens on keys rebuilt from the codes (and, in the relative
    frame, rotated to their block's centre); decode scores them in the latent space with the query
    rotated back instead. Both are q.R(c)(V z + mu): equal up to float rounding."""
    H, KV, d, T = 14, 2, 64, 600
    rope = RoPE(d, 10000.0, 1024, True)
    keys = synthetic_keys(T, KV, d, 21)
    cfg = SVDqConfig(bits=(8, 4, 2, 1, 1, 0, 0, 0), window=32, block=64, rope=frame, rot_block=32)
    cache = SVDqCache(CacheSpec(0, H, KV, d, 1024, None, rope),
                      compute_basis(frame_keys(keys, rope, cfg).reshape(T, 1, -1), cfg), cfg)
    cache.append(keys, keys)
    cache._flush()
    q = np.random.default_rng(22).standard_normal((16, H, d)).astype(np.float32)
    t = cache.nblk * cache.B
    batch = cache._packed_scores(q, np.empty((16, H, t), np.float32))
    one = np.stack([cache._packed_scores(q[i:i + 1], np.empty((1, H, t), np.float32))[0] for i in range(16)])
    assert t > 0 and np.abs(batch - one).max() < 1e-4 * np.abs(one).max()


@pytest.mark.parametrize("topk", [None, 40])
def test_prefill_in_bounded_passes_equals_one_pass(monkeypatch, topk):
    """A prefill chunk over a long context runs its queries in passes whose scores fit
    kernels.SCORE_BYTES (peak memory): tiny passes give what one pass gives, for the SVDq cache
    (sinks, packed, window, causal mask, top-k) and the f16 cache."""
    from svdq_edge import kernels
    H, KV, d, T, n = 14, 2, 64, 700, 40
    rope = RoPE(d, 10000.0, 1024, True)
    keys = synthetic_keys(T + n, KV, d, 31)
    vals = np.random.default_rng(32).standard_normal((T + n, KV, d)).astype(np.float32)
    q = np.random.default_rng(33).standard_normal((n, H, d)).astype(np.float32)
    cfg = SVDqConfig(bits=(8, 4, 2, 1, 1, 0, 0, 0), window=32, block=64, topk=topk)
    spec = CacheSpec(0, H, KV, d, 1024, None, rope)
    caches = [SVDqCache(spec, compute_basis(frame_keys(keys, rope, cfg).reshape(T + n, 1, -1), cfg), cfg),
              DenseCache(spec, np.float16)]
    for c in caches:
        c.append(keys[:T], vals[:T])
        c.append(keys[T:], vals[T:])
        one = c.attend(q, 0.125)
        monkeypatch.setattr(kernels, "SCORE_BYTES", 4 * H * (T + n) * 3)      # 3 queries per pass
        passes = c.attend(q, 0.125)
        monkeypatch.undo()
        assert np.abs(passes - one).max() < 1e-5 * np.abs(vals).max(), type(c).__name__


def test_accounting_matches_arrays():
    H, KV, d, T = 14, 2, 64, 1000
    rope = RoPE(d, 1e6, 2048, True)
    keys = synthetic_keys(T, KV, d, 9)
    cfg = SVDqConfig(bits=PRESETS["2.0"], per_head=True)
    basis = compute_basis(rope.apply(keys, 0), cfg)
    c = SVDqCache(CacheSpec(0, H, KV, d, 2048, None, rope), basis, cfg)
    c.append(keys, keys)
    c.append(keys[:1], keys[:1])          # triggers the flush
    n_codes = sum(x[:, :c.nblk].nbytes for x in c.codes)
    n_sm = c.scale[:, :c.nblk].nbytes + c.mn[:, :c.nblk].nbytes
    n_full = (cfg.sinks + c.offset - c.win_start) * KV * d * 2
    assert c.k_nbytes() == n_codes + n_sm + n_full + c.V16.nbytes + c.mu16.nbytes
    bits = c.k_bits_per_elem()
    assert 2.0 < bits < 16.0              # codes (2.0 nominal) plus scales, basis, window on top
    # the start-up projection for T tokens agrees with what the cache really holds at T
    assert c.k_nbytes(at=c.offset) == c.k_nbytes()
    for extra in (1, 63, 64, 200):
        c.append(keys[:extra], keys[:extra])
        c._flush()
        assert c.k_nbytes(at=c.offset) == c.k_nbytes(), extra


def test_queries_rank_latent_channels_by_score_error():
    """A high-energy key direction that no query reads gets no bits when channels are ranked by
    score error; ranked by key energy alone it takes the widest code."""
    rng = np.random.default_rng(11)
    T, D = 2048, 16
    k = rng.standard_normal((T, 1, D)).astype(np.float32) * np.linspace(1.0, 0.2, D)
    k[:, 0, 0] *= 20.0                                            # loudest key channel
    q = rng.standard_normal((T, 2, D)).astype(np.float32)          # 2 query heads on 1 KV head
    q[..., 0] = 0.0                                               # ... that no query reads
    cfg = SVDqConfig(budget=2.0)
    by_keys = compute_basis(k, cfg)
    M, n = query_moment(q, 1, per_head=True)
    by_scores = compute_basis(k, cfg, M / n)
    e0 = np.eye(D)[0]
    lead = lambda b: np.abs(b.V[0].T @ e0)                        # (r,) overlap of kept channels with e0
    assert lead(by_keys)[0] > 0.99                                # widest channel = the loud one
    assert lead(by_scores).max() < 0.05                           # not kept at all


def test_fitted_widths_respect_budget_and_order():
    var = 10.0 * 0.8 ** np.arange(64)
    w = fit_widths(var, 1.5)
    assert np.all(np.diff(w) <= 0) and set(np.unique(w)) <= {0, 1, 2, 4, 8}
    used = w.sum() + 0.5 * np.count_nonzero(w)
    assert 0.9 * 1.5 * 64 <= used <= 1.5 * 64      # spends the budget (an all-zero allocation once passed)
    assert w[0] >= 4 and w[-1] == 0                # leading channels wide, the tail dropped


def test_joint_widths_share_the_budget_across_layers():
    """(L, D) importances: one budget for all rows, spent where the score error is; a quiet layer
    gives bits to a loud one and the total error drops against a per-layer split."""
    from svdq_edge.kvcache.basis import ERR_FRACTION
    D = 64
    var = np.stack([10.0 * 0.8 ** np.arange(D), 0.01 * 0.8 ** np.arange(D)])     # (2, D)
    W = fit_widths(var, 1.5, overhead_bits=0.25)
    used = W.sum() + 0.25 * np.count_nonzero(W)
    assert 0.9 * 1.5 * 2 * D <= used <= 1.5 * 2 * D
    assert np.all(np.diff(W, axis=1) <= 0)
    assert W[0].sum() > W[1].sum()
    per = np.stack([fit_widths(v, 1.5, overhead_bits=0.25) for v in var])
    err = lambda w: float(np.sum(var * np.vectorize(ERR_FRACTION.get)(w)))
    assert err(W) < 0.8 * err(per)
    assert np.array_equal(fit_widths(var[0], 1.5), fit_widths(var[:1], 1.5)[0])   # 1-D == one row


@pytest.mark.parametrize("width,max_frac", [(1, 0.45), (2, 0.16), (4, 0.012)])
def test_quantized_latent_error_beats_dropping(width, max_frac):
    """Coded at `width`, a Gaussian latent channel keeps error well below its variance (what
    dropping it costs); plain min/max at 1 bit would be 2.7x worse than dropping."""
    z = np.random.default_rng(width).standard_normal((64 * 200, 8)).astype(np.float32)
    widths = np.full(8, width)
    err = 0.0
    for s in range(0, z.shape[0], 64):
        p, sc, mn = svdq_ref.quantize_block(z[s:s + 64], widths)
        err += float(np.sum((svdq_ref.dequantize_block(p, sc, mn, widths, 64) - z[s:s + 64]) ** 2))
    assert err / z.size < max_frac


@pytest.mark.parametrize("kw,msg", [(dict(bits=(4, 2, 2, 1, 1, 0, 0)), "8 group widths"),
                                    (dict(bits=(4, 2, 3, 1, 1, 0, 0, 0)), "widths must be in"),
                                    (dict(bits=(1, 2, 2, 1, 1, 0, 0, 0)), "must not increase"),
                                    (dict(window=-1), "must be >= 0"),
                                    (dict(topk=-1), "must be >= 0"),
                                    (dict(rope="sideways"), "expected relative, post or pre"),
                                    (dict(rot_block=48), "multiple of 8 that divides"),
                                    (dict(rot_block=256), "multiple of 8 that divides"),
                                    (dict(rot_block=12), "multiple of 8 that divides")])
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SVDqConfig(**kw).validate()


def test_parse_bits():
    assert parse_bits("1.25") == (4, 2, 2, 1, 1, 0, 0, 0)
    assert parse_bits("8,4,2,1,1,0,0,0") == (8, 4, 2, 1, 1, 0, 0, 0)
    assert parse_bits("auto") is None
    with pytest.raises(ValueError):
        parse_bits("lots")


def test_sliding_window_dense_cache_drops_old_tokens():
    H, KV, d, W = 4, 1, 32, 64
    rope = RoPE(d, 10000.0, 4096, True)
    spec = CacheSpec(0, H, KV, d, 4096, W, rope)
    rng = np.random.default_rng(0)
    k = rng.standard_normal((1500, KV, d)).astype(np.float32)
    v = rng.standard_normal((1500, KV, d)).astype(np.float32)
    q = rng.standard_normal((1500, H, d)).astype(np.float32)
    ring = DenseCache(spec)
    full = DenseCache(CacheSpec(0, H, KV, d, 4096, W, rope))
    full.start = 0
    chunks = [300, 1] * 1 + [1] * 200 + [700, 299]
    a = _run(ring, k, v, q, chunks)
    # reference: the plain masked computation over every token
    from svdq_edge.kvcache.base import causal_softmax_attend
    ref, pos = [], 0
    kr = rope.apply(k, 0)
    for n in chunks:
        ref.append(causal_softmax_attend(q[pos:pos + n], kr[:pos + n], v[:pos + n], 0.125, pos, 0, W))
        pos += n
    assert np.allclose(a, np.concatenate(ref), atol=3e-3)
    assert ring.start > 0 and ring.nbytes() < 2 * 2 * (W + 1024) * KV * d


def test_query_moment_matches_zero_padded_queries():
    """Per layer, each head's query sits in its KV head's slot of D = n_kv*d: the moment must be
    that of the zero-padded vectors (the oracle builds them)."""
    rng = np.random.default_rng(5)
    T, H, KV, d = 7, 6, 2, 4
    q = rng.standard_normal((T, H, d)).astype(np.float32)
    pad = np.zeros((T, H, KV * d))
    for h in range(H):
        kv = h // (H // KV)
        pad[:, h, kv * d:(kv + 1) * d] = q[:, h]
    M, n = query_moment(q, KV, per_head=False)
    assert n == T * H
    np.testing.assert_allclose(M[0], np.einsum("thd,the->de", pad, pad), rtol=1e-12, atol=1e-12)
    Mh, nh = query_moment(q, KV, per_head=True)
    assert nh == T * (H // KV)
    np.testing.assert_allclose(Mh[1], np.einsum("thd,the->de", q[:, 3:].astype(np.float64), q[:, 3:].astype(np.float64)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("neox", [True, False])
def test_phase_spread_moves_vectors_along_the_context(neox):
    """rope.spread of post-RoPE vectors at positions p equals RoPE applied at p + o to the
    pre-RoPE ones; spread_moment equals the second moment of the spread vectors."""
    rng = np.random.default_rng(5)
    d, n, KV = 16, 40, 2
    rope = RoPE(d, 10000.0, 2000, neox)
    x = rng.standard_normal((n, KV, d)).astype(np.float32)
    offs = rope.offsets(n + 3, 5, 2000)
    assert offs[0] == 0 and offs[-1] == 2000 - n - 3 and len(offs) == 5
    got = rope.spread(rope.apply(x, 3), offs)                                # (5n, KV, d)
    want = np.concatenate([rope.apply(x, 3 + o) for o in offs])
    np.testing.assert_allclose(got, want, atol=2e-5)
    post = rope.apply(x, 3).astype(np.float64).reshape(n, 1, KV * d)
    M = np.einsum("tgd,tge->gde", post, post) / n
    sp = got.astype(np.float64).reshape(-1, 1, KV * d)
    np.testing.assert_allclose(rope.spread_moment(M, offs), np.einsum("tgd,tge->gde", sp, sp) / sp.shape[0],
                               atol=1e-5)


def test_prompt_basis_is_fitted_to_the_first_keys_and_then_packs():
    """--svdq-basis-source prompt: keys stay f16 (attention exact) until prompt_tokens are held;
    then the basis is the SVD of exactly those keys, the backlog is packed, and attention is
    what a calibrated cache built from that same basis gives."""
    rng = np.random.default_rng(21)
    H, KV, d, T = 4, 2, 16, 400
    cfg = SVDqConfig(budget=2.0, basis_source="prompt", prompt_tokens=256, rank_by="keys", rope="post")
    cfg.validate()
    rope = RoPE(d, 10000.0, 1024, True)
    spec = CacheSpec(0, H, KV, d, 1024, None, rope)
    keys = (rng.standard_normal((T, KV, d)) * np.linspace(2.0, 0.1, d)).astype(np.float32)
    vals = rng.standard_normal((T, KV, d)).astype(np.float32)
    q = rng.standard_normal((1, H, d)).astype(np.float32)
    c = SVDqCache(spec, None, cfg)
    assert c.pending and c.k_bits_per_elem(at=1024) < 16
    c.append(keys[:200], vals[:200])
    ref = causal_softmax_attend(q, rope.apply(keys[:200], 0), vals[:200], 0.25, 199, 0, None)
    np.testing.assert_allclose(c.attend(q, 0.25), ref, rtol=2e-3, atol=2e-3)   # f16 keys only
    assert c.pending and c.nblk == 0
    c.append(keys[200:300], vals[200:300])
    c.append(keys[300:], vals[300:])                                # first flush after 300 held: fit
    assert not c.pending and c.nblk > 0
    held = rope.apply(keys[:300], 0)[cfg.sinks:].astype(np.float16).astype(np.float32)
    held = rope.spread(held, rope.offsets(300, cfg.spread, 1024))            # over the context's phases
    want = compute_basis(held.reshape(-1, 1, KV * d), cfg)
    np.testing.assert_array_equal(c.basis.widths, want.widths)
    np.testing.assert_allclose(np.abs(c.basis.V), np.abs(want.V), atol=1e-4)
    twin = SVDqCache(spec, want, replace(cfg, basis_source="calibrated"))
    twin.append(keys[:300], vals[:300])
    twin.append(keys[300:], vals[300:])
    assert twin.nblk == c.nblk
    np.testing.assert_allclose(c.attend(q, 0.25), twin.attend(q, 0.25), rtol=1e-4, atol=1e-4)


def test_relative_prompt_basis_is_fitted_in_the_block_frame():
    """A prompt basis in the relative frame is the SVD of the held keys each rotated back by its
    rotation block's centre, and the cache then attends as a calibrated cache with that basis."""
    rng = np.random.default_rng(23)
    H, KV, d, T = 4, 2, 16, 400
    cfg = SVDqConfig(budget=2.0, basis_source="prompt", prompt_tokens=256, rank_by="keys", rot_block=32)
    rope = RoPE(d, 10000.0, 1024, True)
    spec = CacheSpec(0, H, KV, d, 1024, None, rope)
    keys = (rng.standard_normal((T, KV, d)) * np.linspace(2.0, 0.1, d)).astype(np.float32)
    vals = rng.standard_normal((T, KV, d)).astype(np.float32)
    q = rng.standard_normal((1, H, d)).astype(np.float32)
    c = SVDqCache(spec, None, cfg)
    c.append(keys[:300], vals[:300])
    c.append(keys[300:], vals[300:])                                # first flush after 300 held: fit
    assert not c.pending and c.nblk > 0
    S = cfg.sinks
    held = rope.apply(keys[:300], 0)[S:].astype(np.float16).astype(np.float32)            # as the cache holds them
    held = rope.apply_at(held, -block_centers(S, 300 - S, 32, S))
    want = compute_basis(held.reshape(-1, 1, KV * d), cfg)
    np.testing.assert_array_equal(c.basis.widths, want.widths)
    np.testing.assert_allclose(np.abs(c.basis.V), np.abs(want.V), atol=1e-4)
    twin = SVDqCache(spec, want, replace(cfg, basis_source="calibrated"))
    twin.append(keys[:300], vals[:300])
    twin.append(keys[300:], vals[300:])
    np.testing.assert_allclose(c.attend(q, 0.25), twin.attend(q, 0.25), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("H,KV,d,window,neox", [(4, 1, 256, 16, True), (14, 2, 64, None, False), (6, 3, 20, 5, True)])
def test_dense_append_attend_equals_append_then_attend(H, KV, d, window, neox):
    """A dense f16 cache's one-call decode step (the backend's rope, store and attend) leaves the
    same rows and returns the same output, bit for bit, as append then attend, over steps that fill
    past a sliding window (rows dropped and moved) and grow the arrays."""
    from svdq_edge.kvcache.base import append_attend
    rng = np.random.default_rng(H + d)
    rope = RoPE(d, 10000.0, 600, neox)
    one, two = (DenseCache(CacheSpec(0, H, KV, d, 600, window, rope)) for _ in range(2))
    if kernels.dense_decoder() is None:
        pytest.skip("the backend has no one-call dense decode")
    pre = rng.standard_normal((7, KV, d)).astype(np.float32)
    for c in (one, two):
        c.append(pre, pre[:, :, ::-1].copy())
    for step in range(300):
        k = rng.standard_normal((1, KV, d)).astype(np.float32)
        v = rng.standard_normal((1, KV, d)).astype(np.float32)
        q = rng.standard_normal((1, H, d)).astype(np.float32)
        got = append_attend(one, k, v, q, 0.125)
        two.append(k, v)
        want = two.attend(q, 0.125)
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
        assert (one.offset, one.start) == (two.offset, two.start)
    rows = slice(0, one.offset - one.start)
    np.testing.assert_array_equal(one.k[rows], two.k[rows])
    np.testing.assert_array_equal(one.v[rows], two.v[rows])


def test_dense_decode_refuses_bad_sizes():
    """The one-call dense decode step checks rows, window start and position before touching the
    cache arrays; the wrapper refuses shapes that do not match."""
    from svdq_edge.kernels import cpu_c
    H, KV, d, cap = 4, 2, 8, 16
    rope = RoPE(d, 10000.0, 32, True)
    kc, vc = np.zeros((cap, KV, d), np.float16), np.zeros((cap, KV, d), np.float16)
    k = v = np.ones((1, KV, d), np.float32)
    q = np.ones((1, H, d), np.float32)
    dd = cpu_c.DenseDecoder()
    assert dd(kc, vc, 3, 0, k, v, q, 1.0, rope.cos, rope.sin, 3, True).shape == (1, H, d)
    for row, lo, pos in [(cap, 0, 3), (-1, 0, 3), (3, 4, 3), (3, -1, 3), (3, 0, 32)]:
        with pytest.raises(ValueError, match="bad size"):
            dd(kc, vc, row, lo, k, v, q, 1.0, rope.cos, rope.sin, pos, True)
    with pytest.raises(ValueError, match="do not match"):
        dd(kc, vc, 3, 0, k, v, np.ones((1, H, d + 2), np.float32), 1.0, rope.cos, rope.sin, 3, True)
    with pytest.raises(ValueError, match="do not match"):
        dd(kc, vc[:, :1], 3, 0, k, v, q, 1.0, rope.cos, rope.sin, 3, True)
