"""Numba kernels for the SVDq packed latent-K format (oracle: svdq_ref.py).

score: for each block b and query m, with a_j = qt[m,j]*scale[b,j] and c = sum_j qt[m,j]*min[b,j],
score[m, t] = c + sum_j a_j * code_j(t), read straight from the packed codes (no K rebuilt)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import svdq_ref
from .cpu_numba import _h2f


@njit(cache=True, nogil=True, inline="always")
def _add_width(o, cw, nw, w, b, t0, a, j):
    """o[t] += a[j + k] * code_k(t0 + t) for the nw channels of width w (packed LSB first: token u
    at bit u*w); returns the next channel index."""
    mask = (1 << w) - 1
    for k in range(nw):
        aj = a[j]
        for t in range(o.shape[0]):
            bit = (t0 + t) * w
            o[t] += aj * np.float32((cw[b, k, bit >> 3] >> (bit & 7)) & mask)
        j += 1
    return j


@njit(cache=True, parallel=True, nogil=True)
def _score(c8, c4, c2, c1, n8, n4, n2, n1, scale, mn, qt3, B, rb, out):
    """qt3 (nrb, m, r): projections per rotation block of rb tokens (rb divides B); the tokens of
    block b from t0 take qt3[(b*B + t0) // rb]. One projection for all tokens: nrb = 1, rb = 0."""
    nblk = scale.shape[0]
    m = qt3.shape[1]
    r = qt3.shape[2]
    sub = rb if rb > 0 else B
    for b in prange(nblk):
        a = np.empty(r, np.float32)
        for t0 in range(0, B, sub):
            qt = qt3[(b * B + t0) // rb] if rb > 0 else qt3[0]
            for i in range(m):
                base = np.float32(0.0)
                for j in range(r):
                    a[j] = qt[i, j] * _h2f(np.uint32(scale[b, j]))
                    base += qt[i, j] * _h2f(np.uint32(mn[b, j]))
                o = out[i, b * B + t0:b * B + t0 + sub]
                o[:] = base
                j = _add_width(o, c8, n8, 8, b, t0, a, 0)
                j = _add_width(o, c4, n4, 4, b, t0, a, j)
                j = _add_width(o, c2, n2, 2, b, t0, a, j)
                _add_width(o, c1, n1, 1, b, t0, a, j)


def score(codes: list, scale: np.ndarray, mn: np.ndarray, widths, qt: np.ndarray, B: int) -> np.ndarray:
    """Same contract as svdq_ref.score (qt (m, r), or (nrb, m, r) per rotation block); scale/mn f16
    arrays are read as raw bits."""
    nblk = scale.shape[0]
    out = np.empty((qt.shape[-2], nblk * B), np.float32)
    if nblk == 0:
        return out
    rb = 0 if qt.ndim == 2 else svdq_ref.rot_block_of(qt.shape[0], nblk, B)
    q3 = np.ascontiguousarray(qt if qt.ndim == 3 else qt[None], np.float32)
    c8, c4, c2, c1 = codes
    _score(c8, c4, c2, c1, c8.shape[1], c4.shape[1], c2.shape[1], c1.shape[1],
           scale.view(np.uint16), mn.view(np.uint16), q3, B, rb, out)
    return out
