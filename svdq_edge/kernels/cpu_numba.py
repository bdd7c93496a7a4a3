"""Numba backend: matmul straight from GGML blocks with 8-bit activations (integer dots), the
fallback where the C module did not compile. The numpy oracle is kernels/ref.py.

Every weight block is seen in 32-element sub-blocks, each decoded to integer codes q[32] with two
scales and two mins (one per 16 values) so that x = s*q + m; then
    dot(w, x) = sum_b dx_b * (s0*sum(q*xq)[:16] + s1*sum(q*xq)[16:] + m0*bsum0 + m1*bsum1)
with xq, dx, bsum from the activation's Q8 quantization (ref.quantize_q8).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..quants import LAYOUTS, REPACKED_FROM

# qtype codes (ggml)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q4_K, Q5_K, Q6_K, BF16 = 12, 13, 14, 30


@njit(inline="always")
def _h2f(h):
    """IEEE half bits (uint32) -> float32, exact (subnormals, inf, nan included)."""
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = np.float32(m) * np.float32(5.960464477539063e-08)   # m * 2**-24
        return -v if sign else v
    if e == 31:
        bits = sign | 0x7F800000 | (m << 13)
    else:
        bits = sign | ((e + 112) << 23) | (m << 13)
    return np.uint32(bits).view(np.float32)


@njit(inline="always")
def _f16(lo, hi):
    return _h2f(np.uint32(lo) | (np.uint32(hi) << 8))


@njit(inline="always")
def _scale_min_k4(j, sc, base):
    if j < 4:
        return sc[base + j] & 63, sc[base + j + 4] & 63
    s = (sc[base + j + 4] & 0xF) | ((sc[base + j - 4] >> 6) << 4)
    m = (sc[base + j + 4] >> 4) | ((sc[base + j] >> 6) << 4)
    return s, m


@njit(inline="always")
def _decode32(row, qtype, b, q, sm):
    """Sub-block b (elements 32b..32b+31) of a GGML row -> q int32[32], sm = (s0, s1, m0, m1)."""
    if qtype == Q8_0:
        o = b * 34
        d = _f16(row[o], row[o + 1])
        for l in range(32):
            v = np.int32(row[o + 2 + l])
            q[l] = v - 256 if v > 127 else v
        sm[0] = d; sm[1] = d; sm[2] = 0.0; sm[3] = 0.0
    elif qtype == Q4_0 or qtype == Q4_1:
        nb = 18 if qtype == Q4_0 else 20
        o = b * nb
        d = _f16(row[o], row[o + 1])
        qs = o + (2 if qtype == Q4_0 else 4)
        off = 8 if qtype == Q4_0 else 0
        for l in range(16):
            v = np.int32(row[qs + l])
            q[l] = (v & 0xF) - off
            q[l + 16] = (v >> 4) - off
        m = _f16(row[o + 2], row[o + 3]) if qtype == Q4_1 else np.float32(0.0)
        sm[0] = d; sm[1] = d; sm[2] = m; sm[3] = m
    elif qtype == Q5_0 or qtype == Q5_1:
        nb = 22 if qtype == Q5_0 else 24
        o = b * nb
        d = _f16(row[o], row[o + 1])
        h = o + (2 if qtype == Q5_0 else 4)
        qh = np.uint32(row[h]) | (np.uint32(row[h + 1]) << 8) | (np.uint32(row[h + 2]) << 16) | (np.uint32(row[h + 3]) << 24)
        qs = h + 4
        off = 16 if qtype == Q5_0 else 0
        for l in range(16):
            v = np.int32(row[qs + l])
            q[l] = ((v & 0xF) | (np.int32((qh >> l) & 1) << 4)) - off
            q[l + 16] = ((v >> 4) | (np.int32((qh >> (l + 16)) & 1) << 4)) - off
        m = _f16(row[o + 2], row[o + 3]) if qtype == Q5_1 else np.float32(0.0)
        sm[0] = d; sm[1] = d; sm[2] = m; sm[3] = m
    elif qtype == Q4_K or qtype == Q5_K:
        nb = 144 if qtype == Q4_K else 176
        o = (b // 8) * nb
        j = b % 8
        d = _f16(row[o], row[o + 1])
        dmin = _f16(row[o + 2], row[o + 3])
        s, mn = _scale_min_k4(j, row, o + 4)
        qs = o + (16 if qtype == Q4_K else 48) + (j // 2) * 32
        sh = 4 * (j % 2)
        if qtype == Q4_K:
            for l in range(32):
                q[l] = (np.int32(row[qs + l]) >> sh) & 0xF
        else:
            qh = o + 16
            for l in range(32):
                q[l] = ((np.int32(row[qs + l]) >> sh) & 0xF) | (((np.int32(row[qh + l]) >> j) & 1) << 4)
        ds = d * np.float32(s)
        dm = -dmin * np.float32(mn)
        sm[0] = ds; sm[1] = ds; sm[2] = dm; sm[3] = dm
    else:  # Q6_K
        o = (b // 8) * 210
        j = b % 8
        hh = j // 4
        p = j % 4
        d = _f16(row[o + 208], row[o + 209])
        ql = o + hh * 64 + (32 if p % 2 == 1 else 0)
        qh = o + 128 + hh * 32
        sh = 4 if p >= 2 else 0
        for l in range(32):
            lo = (np.int32(row[ql + l]) >> sh) & 0xF
            hi = (np.int32(row[qh + l]) >> (2 * p)) & 3
            q[l] = (lo | (hi << 4)) - 32
        s0 = np.int32(row[o + 192 + hh * 8 + p * 2])
        s1 = np.int32(row[o + 192 + hh * 8 + p * 2 + 1])
        s0 = s0 - 256 if s0 > 127 else s0
        s1 = s1 - 256 if s1 > 127 else s1
        sm[0] = d * np.float32(s0); sm[1] = d * np.float32(s1); sm[2] = 0.0; sm[3] = 0.0


@njit(cache=True, nogil=True)
def _quantize_q8(x, xd, xq, xbs):
    """x: f32 (n, k) -> xd f32 (n, k/32), xq int8 (n, k), xbs int32 (n, k/16) (as ref.quantize_q8)."""
    n, k = x.shape
    for t in range(n):
        for b in range(k // 32):
            amax = np.float32(0.0)
            for l in range(32):
                a = abs(x[t, b * 32 + l])
                if a > amax:
                    amax = a
            d = amax / np.float32(127.0)
            inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
            s0 = 0
            s1 = 0
            for l in range(32):
                v = np.int32(np.rint(x[t, b * 32 + l] * inv))
                xq[t, b * 32 + l] = v
                if l < 16:
                    s0 += v
                else:
                    s1 += v
            xd[t, b] = d
            xbs[t, 2 * b] = s0
            xbs[t, 2 * b + 1] = s1


@njit(cache=True, parallel=True, nogil=True)
def _matmul_q(data, qtype, xd, xq, xbs, out):
    rows = data.shape[0]
    n, k = xq.shape
    nb = k // 32
    n_chunks = min(rows, 256)
    for c in prange(n_chunks):
        r0 = rows * c // n_chunks
        r1 = rows * (c + 1) // n_chunks
        q = np.empty(32, np.int32)
        sm = np.empty(4, np.float32)
        acc = np.empty(n, np.float32)
        for r in range(r0, r1):
            row = data[r]
            acc[:] = 0.0
            for b in range(nb):
                _decode32(row, qtype, b, q, sm)
                for t in range(n):
                    i0 = 0
                    i1 = 0
                    base = b * 32
                    for l in range(16):
                        i0 += q[l] * np.int32(xq[t, base + l])
                    for l in range(16, 32):
                        i1 += q[l] * np.int32(xq[t, base + l])
                    acc[t] += xd[t, b] * (sm[0] * np.float32(i0) + sm[1] * np.float32(i1)
                                          + sm[2] * np.float32(xbs[t, 2 * b]) + sm[3] * np.float32(xbs[t, 2 * b + 1]))
            for t in range(n):
                out[t, r] = acc[t]


@njit(cache=True, parallel=True, nogil=True)
def _matmul_f(data, qtype, x, out):
    rows = data.shape[0]
    n, k = x.shape
    n_chunks = min(rows, 256)
    for c in prange(n_chunks):
        r0 = rows * c // n_chunks
        r1 = rows * (c + 1) // n_chunks
        w = np.empty(k, np.float32)
        for r in range(r0, r1):
            _row_float(data[r], qtype, w)
            for t in range(n):
                s = np.float32(0.0)
                for i in range(k):
                    s += w[i] * x[t, i]
                out[t, r] = s


@njit(inline="always")
def _row_float(row, qtype, w):
    k = w.shape[0]
    if qtype == F32:
        w[:] = row.view(np.float32)[:k]
    elif qtype == F16:
        u = row.view(np.uint16)
        for i in range(k):
            w[i] = _h2f(np.uint32(u[i]))
    else:  # BF16
        u = row.view(np.uint16)
        for i in range(k):
            w[i] = np.uint32(np.uint32(u[i]) << 16).view(np.float32)


@njit(inline="always")
def _store32(q, sm, dst):
    """dst[32] = s*q + m, the min added only where the type has one (keeps -0.0 as gguf does)."""
    for l in range(32):
        h = 0 if l < 16 else 1
        v = sm[h] * np.float32(q[l])
        if sm[2 + h] != 0.0:
            v = v + sm[2 + h]
        dst[l] = v


@njit(cache=True, parallel=True, nogil=True)
def _get_rows(data, qtype, ids, out):
    m, k = out.shape
    for i in prange(m):
        row = data[ids[i]]
        if qtype == F32 or qtype == F16 or qtype == BF16:
            w = np.empty(k, np.float32)
            _row_float(row, qtype, w)
            out[i, :] = w
            continue
        q = np.empty(32, np.int32)
        sm = np.empty(4, np.float32)
        for b in range(k // 32):
            _decode32(row, qtype, b, q, sm)
            _store32(q, sm, out[i, b * 32:b * 32 + 32])


# -- backend contract --------------------------------------------------------------------------
_FLOAT = (F32, F16, BF16)
_SUPPORTED = set(LAYOUTS)


PREFILL_MIN_TOKENS = 4     # from this many tokens on, dequantize row panels and use BLAS


@njit(cache=True, parallel=True, nogil=True)
def _dequant_panel(data, qtype, r0, out):
    """Rows r0..r0+len(out) of W -> out float32 (m, k)."""
    m, k = out.shape
    for i in prange(m):
        row = data[r0 + i]
        if qtype == F32 or qtype == F16 or qtype == BF16:
            _row_float(row, qtype, out[i])
            continue
        q = np.empty(32, np.int32)
        sm = np.empty(4, np.float32)
        for b in range(k // 32):
            _decode32(row, qtype, b, q, sm)
            _store32(q, sm, out[i, b * 32:b * 32 + 32])


def _matmul_panels(data, qtype, x, out):
    """Batched prefill: each weight row is decoded once per call and reused for all n tokens."""
    rows = data.shape[0]
    k = x.shape[1]
    step = max(16, min(rows, (4 << 20) // (4 * k)))        # ~4 MB f32 panel (fits in L2/L3)
    panel = np.empty((step, k), np.float32)                 # (step, k)
    for r0 in range(0, rows, step):
        m = min(step, rows - r0)
        _dequant_panel(data, qtype, r0, panel[:m])
        out[:, r0:r0 + m] = x @ panel[:m].T


def _plain(data: np.ndarray, qtype: int):
    """A load-time repacked weight (the C backend's Q5_0X4, Q8_0X4) as the GGML blocks it came from."""
    if qtype in REPACKED_FROM:
        from .ref import unrepack_x4
        return unrepack_x4(data, qtype), int(REPACKED_FROM[qtype])
    return data, qtype


def matmul(data: np.ndarray, qtype: int, x: np.ndarray, out: np.ndarray) -> None:
    data, qtype = _plain(data, qtype)
    if qtype not in _SUPPORTED:
        raise ValueError(f"unsupported type {qtype}")
    if x.shape[0] >= PREFILL_MIN_TOKENS:
        _matmul_panels(data, qtype, x, out)
        return
    if qtype in _FLOAT:
        _matmul_f(data, qtype, x, out)
        return
    n, k = x.shape
    xd = np.empty((n, k // 32), np.float32)       # (n, k/32) activation scales
    xq = np.empty((n, k), np.int8)                # (n, k) activation codes
    xbs = np.empty((n, k // 16), np.int32)        # (n, k/16) code sums per 16
    _quantize_q8(x, xd, xq, xbs)
    _matmul_q(data, qtype, xd, xq, xbs, out)


def get_rows(data: np.ndarray, qtype: int, ids: np.ndarray, out: np.ndarray) -> None:
    data, qtype = _plain(data, qtype)
    _get_rows(data, qtype, ids, out)


def set_threads(n: int) -> None:
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
