"""Dense f16 (or f32) KV cache: post-RoPE keys and values stored as they are."""
from __future__ import annotations

import numpy as np

from .base import CacheSpec, causal_softmax_attend


class DenseCache:
    """K and V stored per token. k: (cap, n_kv, head_dim) dtype, v: (cap, n_kv, head_dim) dtype.

    Capacity grows by doubling up to n_ctx, so a short chat does not reserve the whole context.
    """

    def __init__(self, spec: CacheSpec, dtype=np.float16):
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.offset = 0
        self._cap = 0
        self.k = np.empty((0, spec.n_kv, spec.head_dim), self.dtype)   # (cap, n_kv, head_dim)
        self.v = np.empty((0, spec.n_kv, spec.head_dim), self.dtype)   # (cap, n_kv, head_dim)

    def _reserve(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = min(max(n, 2 * self._cap, 256), self.spec.n_ctx)
        if cap < n:
            raise ValueError(f"context full: {n} tokens > n_ctx {self.spec.n_ctx}")
        for name in ("k", "v"):
            old = getattr(self, name)
            new = np.empty((cap, self.spec.n_kv, self.spec.head_dim), self.dtype)
            new[: self.offset] = old[: self.offset]
            setattr(self, name, new)
        self._cap = cap

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        n = k.shape[0]
        self._reserve(self.offset + n)
        self.k[self.offset:self.offset + n] = self.spec.rope.apply(k, self.offset)
        self.v[self.offset:self.offset + n] = v
        self.offset += n

    def attend(self, q: np.ndarray, scale: float) -> np.ndarray:
        n = q.shape[0]
        q0 = self.offset - n
        lo = 0
        if self.spec.window is not None:
            lo = max(0, q0 - self.spec.window + 1)
        k = self.k[lo:self.offset].astype(np.float32)
        v = self.v[lo:self.offset].astype(np.float32)
        return causal_softmax_attend(q, k, v, scale, q0, lo, self.spec.window)

    def trim(self, n: int) -> None:
        self.offset = min(self.offset, max(0, n))

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def k_bits_per_elem(self) -> float:
        return 8.0 * self.dtype.itemsize
