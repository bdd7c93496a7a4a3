"""Dense f16 (or f32) KV cache: post-RoPE keys and values stored as they are."""
from __future__ import annotations

import numpy as np

from .. import kernels
from .base import CacheSpec, causal_softmax_attend


class DenseCache:
    """K and V stored per token. k: (cap, n_kv, head_dim) dtype, v: (cap, n_kv, head_dim) dtype.

    Capacity grows by doubling up to n_ctx, so a short chat does not reserve the whole context.
    """

    def __init__(self, spec: CacheSpec, dtype=np.float16):
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.offset = 0
        self.start = 0        # position of row 0: sliding-window layers drop tokens they can no longer see
        self._cap = 0
        self.k = np.empty((0, spec.n_kv, spec.head_dim), self.dtype)   # (cap, n_kv, head_dim)
        self.v = np.empty((0, spec.n_kv, spec.head_dim), self.dtype)   # (cap, n_kv, head_dim)
        self._decoder = None  # the backend's one-call decode step (append_attend), made on first use

    def _reserve(self, n: int) -> None:
        """Room for positions up to n (rows n - start)."""
        w = self.spec.window
        if w is not None and n - self.start > self._cap and self.offset - self.start > w:
            # sliding window: drop rows no future query can see (keep the last w - 1 tokens)
            drop = self.offset - (w - 1) - self.start
            keep = self.offset - self.start - drop
            self.k[:keep] = self.k[drop:drop + keep]
            self.v[:keep] = self.v[drop:drop + keep]
            self.start += drop
        rows = n - self.start
        if rows <= self._cap:
            return
        cap = min(max(rows, 2 * self._cap, 256), self.spec.n_ctx)
        if cap < rows:
            raise ValueError(f"context full: {n} tokens > n_ctx {self.spec.n_ctx}")
        for name in ("k", "v"):
            old = getattr(self, name)
            new = np.empty((cap, self.spec.n_kv, self.spec.head_dim), self.dtype)
            new[: self.offset - self.start] = old[: self.offset - self.start]
            setattr(self, name, new)
        self._cap = cap

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        n = k.shape[0]
        self._reserve(self.offset + n)
        r = self.offset - self.start
        self.k[r:r + n] = self.spec.rope.apply(k, self.offset)
        self.v[r:r + n] = v
        self.offset += n

    def append_attend(self, k: np.ndarray, v: np.ndarray, q: np.ndarray, scale: float) -> np.ndarray:
        """append(k, v) then attend(q, scale) for one decode token: one native call where the
        backend has it (f16 storage), else the two steps."""
        if self._decoder is None:
            self._decoder = (kernels.dense_decoder() if self.dtype == np.float16 else None) or False
        if not self._decoder or k.shape[0] != 1 or q.shape[0] != 1:
            self.append(k, v)
            return self.attend(q, scale)
        self._reserve(self.offset + 1)
        pos = self.offset
        lo = pos - self.spec.window + 1 if self.spec.window is not None else 0
        lo = max(lo, self.start)
        rope = self.spec.rope
        out = self._decoder(self.k, self.v, pos - self.start, lo - self.start, k, v, q, scale,
                            rope.cos, rope.sin, pos, rope.neox)
        self.offset += 1
        return out

    def attend(self, q: np.ndarray, scale: float) -> np.ndarray:
        n = q.shape[0]
        q0 = self.offset - n
        lo = self.start
        if self.spec.window is not None:
            lo = max(lo, q0 - self.spec.window + 1)
        k, v = self.k[lo - self.start:self.offset - self.start], self.v[lo - self.start:self.offset - self.start]
        if self.dtype == np.float16:
            return kernels.attention_f16(q, k, v, scale, q0, lo, self.spec.window)
        return causal_softmax_attend(q, k.astype(np.float32), v.astype(np.float32), scale, q0, lo, self.spec.window)

    def trim(self, n: int) -> None:
        if n < self.offset and n < self.start + (self.spec.window or 0) and self.start > 0:
            raise ValueError("cannot rewind past the dropped part of a sliding window")
        self.offset = min(self.offset, max(0, n))

    def rows_at(self, at: int | None) -> int:
        """Tokens held now, or held after `at` tokens (a sliding window keeps at most its window)."""
        if at is None:
            return self.offset - self.start
        return at if self.spec.window is None else min(at, self.spec.window)

    def nbytes(self, at: int | None = None) -> int:
        """Bytes of the tokens held (capacity grows by doubling; the unused tail is not counted)."""
        return 2 * self.rows_at(at) * self.spec.n_kv * self.spec.head_dim * self.dtype.itemsize

    def k_bits_per_elem(self, at: int | None = None) -> float:
        return 8.0 * self.dtype.itemsize


class QuantCache(DenseCache):
    """llama.cpp's per-token block caches as baselines: q8_0 / q4_0 blocks of 32 values per row
    (the GGML formats, via gguf.quants), dequantized for attention as llama.cpp does on CPU."""

    append_attend = None            # its own append and attend (quantized rows), not the f16 call

    def __init__(self, spec: CacheSpec, ctk: str, ctv: str):
        super().__init__(spec, np.float16)
        from gguf import GGMLQuantizationType as T
        self.types = {"k": getattr(T, ctk.upper()), "v": getattr(T, ctv.upper())}
        from ..quants import row_bytes
        rb = {n: row_bytes(t, spec.head_dim) for n, t in self.types.items()}
        self.kq = np.empty((0, spec.n_kv, rb["k"]), np.uint8)       # (cap, n_kv, row bytes)
        self.vq = np.empty((0, spec.n_kv, rb["v"]), np.uint8)
        self._bits = {n: 8.0 * rb[n] / spec.head_dim for n in rb}

    def _store(self, name, x):
        from gguf.quants import quantize
        t = self.types[name]
        if t == 1:   # F16
            return x.astype(np.float16).view(np.uint8).reshape(x.shape[0], x.shape[1], -1)
        return quantize(x.reshape(-1, x.shape[-1]), t).reshape(x.shape[0], x.shape[1], -1)

    def _load(self, name, q):
        from gguf.quants import dequantize
        return dequantize(q.reshape(-1, q.shape[-1]), self.types[name]).reshape(q.shape[0], q.shape[1], -1).astype(np.float32)

    def append(self, k, v):
        n = k.shape[0]
        need = self.offset + n
        if need > self.kq.shape[0]:
            cap = min(max(need, 2 * self.kq.shape[0], 256), self.spec.n_ctx)
            if cap < need:
                raise ValueError(f"context full: {need} tokens > n_ctx {self.spec.n_ctx}")
            for nm in ("kq", "vq"):
                old = getattr(self, nm)
                new = np.empty((cap,) + old.shape[1:], np.uint8)
                new[: self.offset] = old[: self.offset]
                setattr(self, nm, new)
        self.kq[self.offset:need] = self._store("k", self.spec.rope.apply(k, self.offset))
        self.vq[self.offset:need] = self._store("v", v)
        self.offset = need

    def attend(self, q, scale):
        n = q.shape[0]
        q0 = self.offset - n
        lo = max(0, q0 - self.spec.window + 1) if self.spec.window is not None else 0
        k = self._load("k", self.kq[lo:self.offset])
        v = self._load("v", self.vq[lo:self.offset])
        return causal_softmax_attend(q, k, v, scale, q0, lo, self.spec.window)

    def nbytes(self, at: int | None = None):
        rows = self.offset if at is None else self.rows_at(at)
        return rows * self.spec.n_kv * (self.kq.shape[2] + self.vq.shape[2])

    def k_bits_per_elem(self, at: int | None = None):
        return self._bits["k"]
