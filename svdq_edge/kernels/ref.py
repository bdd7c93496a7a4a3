"""numpy oracle kernels: GGML block dequantization (bit-exact with gguf.quants), 8-bit activation
quantization, and matmul in float and in the integer-dot form the fast kernels compute.

Block layouts (little-endian, d/m are f16 unless noted):
  Q4_0  18 B: d, qs[16]                 x[j] = d*((qs[j]&15)-8), x[j+16] = d*((qs[j]>>4)-8)
  Q4_1  20 B: d, m, qs[16]              x = d*q + m
  Q5_0  22 B: d, qh u32, qs[16]         5th bit of x[j] is bit j of qh; x = d*(q-16)
  Q5_1  24 B: d, m, qh u32, qs[16]      x = d*q + m
  Q8_0  34 B: d, qs int8[32]            x = d*q
  Q4_K 144 B: d, dmin, scales[12] (8 six-bit scale/min pairs), qs[128]; 8 sub-blocks of 32:
              x = d*sc*q - dmin*m; sub-blocks 2c, 2c+1 are the low/high nibbles of qs[32c:32c+32]
  Q5_K 176 B: d, dmin, scales[12], qh[32], qs[128]; as Q4_K with a 5th bit from qh
  Q6_K 210 B: ql[128], qh[64], scales int8[16], d; 16 sub-blocks of 16: x = d*sc*(q-32)
  Q5_0X4 88 B (ours, made at load time): 4 Q5_0 blocks as qs[4][16], lo mask u64, hi mask u64, d[4]
  Q8_0X4 136 B (ours): 4 Q8_0 blocks as qs int8[4][32], d[4]
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from ..quants import LAYOUTS, Q5_0X4, Q8_0X4, REPACKED_FROM

QK = 32


def _f16(b: np.ndarray) -> np.ndarray:
    return b.copy().view(np.float16).astype(np.float32)


def _blocks(data: np.ndarray, qtype: int) -> np.ndarray:
    nb = LAYOUTS[qtype][1]
    return np.ascontiguousarray(data).reshape(-1, nb)


def _scale_min_k4(scales: np.ndarray):
    """scales: uint8 (nb, 12) -> sc, m: uint8 (nb, 8), six bits each (ggml get_scale_min_k4)."""
    s = scales
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


# quads of 4 blocks: (block bytes, [(field start, field length, quad offset)]): block i's field goes
# to quad offset + length * i (Q5_0X4: nibbles, fifth bits of values 0-15 and 16-31, scales;
# Q8_0X4: codes, scales)
X4_FIELDS = {Q5_0X4: (22, [(6, 16, 0), (2, 2, 64), (4, 2, 72), (0, 2, 80)]),
             Q8_0X4: (34, [(2, 32, 0), (0, 2, 128)])}


def repack_x4(data: np.ndarray, to: int) -> np.ndarray:
    """Q5_0 / Q8_0 rows uint8 (rows, rb), whole quads of 4 blocks -> the same rows in layout `to`
    (Q5_0X4 / Q8_0X4): the oracle of the C repack."""
    bb, fields = X4_FIELDS[to]
    rows = data.shape[0]
    b = np.ascontiguousarray(data).reshape(rows, -1, 4, bb)                  # (rows, quads, 4, bb)
    out = np.empty((rows, b.shape[1], 4 * bb), np.uint8)                       # (rows, quads, 4 bb)
    for s0, n, o in fields:
        out[:, :, o:o + 4 * n] = b[:, :, :, s0:s0 + n].reshape(rows, -1, 4 * n)
    return out.reshape(rows, -1)


def unrepack_x4(data: np.ndarray, frm: int) -> np.ndarray:
    """Rows in layout `frm` (Q5_0X4 / Q8_0X4) -> the Q5_0 / Q8_0 rows they came from."""
    bb, fields = X4_FIELDS[frm]
    rows = data.shape[0]
    o_ = np.ascontiguousarray(data).reshape(rows, -1, 4 * bb)                 # (rows, quads, 4 bb)
    b = np.empty((rows, o_.shape[1], 4, bb), np.uint8)                         # (rows, quads, 4, bb)
    for s0, n, o in fields:
        b[:, :, :, s0:s0 + n] = o_[:, :, o:o + 4 * n].reshape(rows, -1, 4, n)
    return b.reshape(rows, -1)


def dequantize(data: np.ndarray, qtype: int) -> np.ndarray:
    """data: uint8 (rows, row_bytes) -> float32 (rows, cols)."""
    rows = data.shape[0]
    if qtype in X4_FIELDS:
        return dequantize(unrepack_x4(data, qtype), REPACKED_FROM[qtype])
    if qtype == T.F32:
        return np.ascontiguousarray(data).view(np.float32).reshape(rows, -1).copy()
    if qtype == T.F16:
        return np.ascontiguousarray(data).view(np.float16).astype(np.float32).reshape(rows, -1)
    if qtype == T.BF16:
        u = np.ascontiguousarray(data).view(np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(rows, -1)
    b = _blocks(data, qtype)
    nb = b.shape[0]
    if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1):
        has_m = qtype in (T.Q4_1, T.Q5_1)
        d = _f16(b[:, 0:2])
        o = 2
        m = None
        if has_m:
            m = _f16(b[:, 2:4])
            o = 4
        qh = None
        if qtype in (T.Q5_0, T.Q5_1):
            qh = b[:, o:o + 4].copy().view(np.uint32).reshape(nb)
            o += 4
        qs = b[:, o:o + 16]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.int32)       # (nb, 32)
        if qh is not None:
            bits = (qh[:, None] >> np.arange(32, dtype=np.uint32)[None, :]) & 1
            q |= (bits.astype(np.int32) << 4)
        if not has_m:
            q -= 8 if qh is None else 16
            y = d * q.astype(np.float32)
        else:
            y = d * q.astype(np.float32) + m
    elif qtype == T.Q8_0:
        d = _f16(b[:, 0:2])
        y = d * b[:, 2:34].view(np.int8).astype(np.float32)
    elif qtype in (T.Q4_K, T.Q5_K):
        d = _f16(b[:, 0:2])
        dmin = _f16(b[:, 2:4])
        sc, mn = _scale_min_k4(b[:, 4:16])
        if qtype == T.Q4_K:
            qs = b[:, 16:144]
            qh = None
        else:
            qh = b[:, 16:48]
            qs = b[:, 48:176]
        qs = qs.reshape(nb, 4, 32)
        q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(nb, 8, 32).astype(np.int32)
        if qh is not None:
            sub = np.arange(8)
            hb = (qh[:, None, :] >> sub[None, :, None].astype(np.uint8)) & 1         # (nb, 8, 32)
            q |= hb.astype(np.int32) << 4
        dd = (d * sc.astype(np.float32)).reshape(nb, 8, 1)
        dm = (dmin * mn.astype(np.float32)).reshape(nb, 8, 1)
        y = dd * q.astype(np.float32) - dm
    elif qtype == T.Q6_K:
        ql = b[:, 0:128].reshape(nb, 2, 64)
        qh = b[:, 128:192].reshape(nb, 2, 32)
        sc = b[:, 192:208].view(np.int8).astype(np.float32).reshape(nb, 16)
        d = _f16(b[:, 208:210])
        q = np.empty((nb, 2, 4, 32), np.int32)
        q[:, :, 0] = (ql[:, :, :32] & 0xF) | (((qh >> 0) & 3) << 4)
        q[:, :, 1] = (ql[:, :, 32:] & 0xF) | (((qh >> 2) & 3) << 4)
        q[:, :, 2] = (ql[:, :, :32] >> 4) | (((qh >> 4) & 3) << 4)
        q[:, :, 3] = (ql[:, :, 32:] >> 4) | (((qh >> 6) & 3) << 4)
        q = (q - 32).reshape(nb, 16, 16)
        y = (d * sc).reshape(nb, 16, 1) * q.astype(np.float32)
    else:
        raise ValueError(f"no reference dequantization for type {qtype}")
    return y.reshape(rows, -1).astype(np.float32)


# -- activations -------------------------------------------------------------------------------

def quantize_q8(x: np.ndarray):
    """x: float32 (n, k) -> (d float32 (n, k/32), qs int8 (n, k), bsum int32 (n, k/16)).
    Per 32 values: d = amax/127, q = round(x/d) (ggml's quantize_row_q8_0 rounding); bsum holds
    the sums of q over each 16 values (for the min terms of Q4_1/Q5_1/K-quants)."""
    n, k = x.shape
    xb = x.reshape(n, k // QK, QK)
    amax = np.abs(xb).max(axis=2)
    d = (amax / 127.0).astype(np.float32)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.rint(xb * inv[:, :, None]).astype(np.int8).reshape(n, k)
    bs = q.reshape(n, k // 16, 16).astype(np.int32).sum(axis=2)
    return d, q, bs


# -- backend contract --------------------------------------------------------------------------

def _row_chunks(rows: int, cols: int):
    step = max(1, (1 << 24) // max(cols, 1))      # bound the dequantized temporary to ~64 MB
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def matmul(data: np.ndarray, qtype: int, x: np.ndarray, out: np.ndarray) -> None:
    """out (n, rows) = x (n, cols) @ dequantize(W).T in float32."""
    for r0, r1 in _row_chunks(data.shape[0], x.shape[1]):
        out[:, r0:r1] = x @ dequantize(data[r0:r1], qtype).T


def matmul_q8(data: np.ndarray, qtype: int, x: np.ndarray) -> np.ndarray:
    """The integer-dot formulation: x quantized with quantize_q8, W's 8-bit codes and per-16
    scales/mins, float64 accumulation. Equals what cpu_numba computes up to float summation order."""
    if qtype in (T.F32, T.F16, T.BF16):
        return (x.astype(np.float64) @ dequantize(data, qtype).T.astype(np.float64)).astype(np.float32)
    d, q, bs = quantize_q8(x)
    xq = (np.repeat(d, QK, axis=1) * q.astype(np.float32)).astype(np.float64)    # (n, k) exact products
    w = dequantize(data, qtype).astype(np.float64)
    return (xq @ w.T).astype(np.float32)


def get_rows(data: np.ndarray, qtype: int, ids: np.ndarray, out: np.ndarray) -> None:
    out[:] = dequantize(data[ids], qtype)


def set_threads(n: int) -> None:
    pass


# -- small per-token ops of the layer graph (the oracles of the C versions) ----------------------

ACTS = ("silu", "gelu_tanh")


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x: float32 (..., d) -> x / rms(x) * w."""
    ms = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(ms + eps))) * w


def act_mul(g: np.ndarray, u: np.ndarray, act: str) -> np.ndarray:
    """Gated FFN: act(g) * u, act silu or gelu (tanh form)."""
    if act == "gelu_tanh":
        a = 0.5 * g * (1.0 + np.tanh(np.float32(0.7978845608028654) * (g + np.float32(0.044715) * g * g * g)))
    else:
        a = g / (1.0 + np.exp(-g))
    return a * u


def rotate_pairs(x: np.ndarray, c: np.ndarray, s: np.ndarray, neox: bool) -> np.ndarray:
    """x (..., d) with each RoPE pair rotated by the angle whose cos c / sin s (broadcast against
    (..., d/2)) are given; neox pairs are the halves (i, i + d/2), else adjacent (2i, 2i + 1).
    A negated s rotates back (R^T)."""
    half = x.shape[-1] // 2
    out = np.empty_like(x)
    if neox:
        a, b = x[..., :half], x[..., half:]
        out[..., :half] = a * c - b * s
        out[..., half:] = a * s + b * c
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
    return out


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, pos0: int, neox: bool) -> np.ndarray:
    """x: float32 (n, heads, d) at positions pos0.. rotated by the tables cos/sin (n_ctx, d/2)."""
    n = x.shape[0]
    return rotate_pairs(x, cos[pos0:pos0 + n, None, :], sin[pos0:pos0 + n, None, :], neox)   # tables (n, 1, d/2)
