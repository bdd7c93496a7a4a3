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


def backends():
    out = [("numpy", ref)]
    from svdq_edge.kernels import cpu_numba
    out.append(("numba", cpu_numba))
    try:
        from svdq_edge.kernels import cpu_c
        out.append(("c", cpu_c))
    except Exception:
        pass
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
@pytest.mark.parametrize("n", [1, 3, 17])
def test_matmul_backends(qtype, n):
    rows, cols = 37, 512
    data = random_blocks(qtype, rows, cols, 100 + int(qtype))
    x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
    exact = np.empty((n, rows), np.float32)
    ref.matmul(data, qtype, x, exact)
    q8 = ref.matmul_q8(data, qtype, x)
    scale = np.abs(exact).max()
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
