"""Numba kernels for the SVDq packed latent-K format (oracle: svdq_ref.py).

score: for each block b and query m, with a_j = qt[m,j]*scale[b,j] and c = sum_j qt[m,j]*min[b,j],
score[m, t] = c + sum_j a_j * code_j(t), read straight from the packed codes (no K rebuilt)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu_numba import _h2f


@njit(cache=True, parallel=True, nogil=True)
def _score(c8, c4, c2, c1, n8, n4, n2, n1, scale, mn, qt, B, out):
    nblk = scale.shape[0]
    m = qt.shape[0]
    r = qt.shape[1]
    for b in prange(nblk):
        a = np.empty(r, np.float32)
        for i in range(m):
            base = np.float32(0.0)
            for j in range(r):
                a[j] = qt[i, j] * _h2f(np.uint32(scale[b, j]))
                base += qt[i, j] * _h2f(np.uint32(mn[b, j]))
            o = out[i, b * B:(b + 1) * B]
            o[:] = base
            j = 0
            for k in range(n8):
                aj = a[j]
                for t in range(B):
                    o[t] += aj * np.float32(c8[b, k, t])
                j += 1
            for k in range(n4):
                aj = a[j]
                for t2 in range(B // 2):
                    v = c4[b, k, t2]
                    o[2 * t2] += aj * np.float32(v & 15)
                    o[2 * t2 + 1] += aj * np.float32(v >> 4)
                j += 1
            for k in range(n2):
                aj = a[j]
                for t4 in range(B // 4):
                    v = c2[b, k, t4]
                    o[4 * t4] += aj * np.float32(v & 3)
                    o[4 * t4 + 1] += aj * np.float32((v >> 2) & 3)
                    o[4 * t4 + 2] += aj * np.float32((v >> 4) & 3)
                    o[4 * t4 + 3] += aj * np.float32(v >> 6)
                j += 1
            for k in range(n1):
                aj = a[j]
                for t8 in range(B // 8):
                    v = c1[b, k, t8]
                    for u in range(8):
                        if (v >> u) & 1:
                            o[8 * t8 + u] += aj
                j += 1


def score(codes: list, scale: np.ndarray, mn: np.ndarray, widths, qt: np.ndarray, B: int) -> np.ndarray:
    """Same contract as svdq_ref.score; scale/mn f16 arrays are read as raw bits."""
    nblk = scale.shape[0]
    out = np.empty((qt.shape[0], nblk * B), np.float32)
    if nblk == 0:
        return out
    c8, c4, c2, c1 = codes
    _score(c8, c4, c2, c1, c8.shape[1], c4.shape[1], c2.shape[1], c1.shape[1],
           scale.view(np.uint16), mn.view(np.uint16), np.ascontiguousarray(qt, np.float32), B, out)
    return out
