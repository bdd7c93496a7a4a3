"""Rotary position embedding tables, computed once per (base, head_dim, n_ctx)."""
from __future__ import annotations

import numpy as np

from . import kernels
from .kernels import ref


class RoPE:
    """Rotates (n, heads, head_dim) vectors by position.

    neox=True rotates halves (x[:d/2], x[d/2:]) as qwen2/gemma3 do; neox=False rotates adjacent
    pairs (x[0::2], x[1::2]) as llama does.
    """

    def __init__(self, head_dim: int, base: float, n_ctx: int, neox: bool, scale: float = 1.0):
        self.head_dim, self.base, self.neox = head_dim, float(base), neox
        half = head_dim // 2
        inv = base ** (-np.arange(0, half, dtype=np.float64) * 2.0 / head_dim)      # (half,)
        ang = np.arange(n_ctx, dtype=np.float64)[:, None] / scale * inv[None, :]     # (n_ctx, half)
        self.cos = np.cos(ang).astype(np.float32)                                    # (n_ctx, half)
        self.sin = np.sin(ang).astype(np.float32)                                    # (n_ctx, half)
        self.n_ctx = n_ctx

    def apply(self, x: np.ndarray, pos0: int) -> np.ndarray:
        """x: float32 (n, heads, head_dim) at positions pos0..pos0+n-1 -> rotated copy."""
        return kernels.rope(x, self.cos, self.sin, pos0, self.neox)

    def apply_at(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x: float32 (n, heads, head_dim) at arbitrary positions (n,) -> rotated copy. A negative
        position -p rotates back by p (R(-p) = R(p)^T): cos is even, sin odd."""
        positions = np.asarray(positions)
        a = np.abs(positions)
        s = self.sin[a] * np.sign(positions)[:, None].astype(np.float32)
        return ref.rotate_pairs(x, self.cos[a][:, None, :], s[:, None, :], self.neox)

    def offsets(self, n: int, count: int, span: int) -> np.ndarray:
        """count offsets spread over [0, span - n] (within the table): where n vectors seen at
        positions p are moved to p + o by spread."""
        hi = max(0, min(span, self.n_ctx) - n)
        return np.unique(np.linspace(0, hi, max(1, count)).astype(np.int64))

    def spread(self, x: np.ndarray, offs: np.ndarray) -> np.ndarray:
        """Post-RoPE x (n, heads, head_dim) at positions p -> (len(offs)*n, heads, head_dim): the
        same vectors as they would be at p + o for each offset (R(o) R(p) = R(o + p), a constant
        rotation). A post-RoPE basis fitted to keys seen at positions 0..n covers only those
        rotation phases; its slow-rotating channels drift out of it at long context unless it
        is fitted to spread keys."""
        n = x.shape[0]
        return np.concatenate([self.apply_at(x, np.full(n, o, np.int64)) for o in offs])

    def spread_moment(self, M: np.ndarray, offs: np.ndarray) -> np.ndarray:
        """(G, D, D) second moments of post-RoPE vectors (D = m*head_dim, m heads side by side)
        -> the mean over offsets of R(o) M R(o)^T: the moment of the spread vectors."""
        G, D, _ = M.shape
        m = D // self.head_dim
        out = np.zeros_like(M)
        for o in offs:
            pos = np.full(D, o, np.int64)
            for g in range(G):
                rot = lambda X: self.apply_at(X.reshape(D, m, self.head_dim), pos).reshape(D, D)
                out[g] += rot(rot(M[g]).T)                                        # R M R^T
        return out / len(offs)


def block_centers(p0: int, n: int, rb: int, origin: int) -> np.ndarray:
    """Rotation centres (n,) of positions p0..p0+n-1 in blocks of rb tokens counted from `origin`:
    the block-relative frame stores a key rotated back by its block's centre, R(p - c) k_pre, so
    within a block the key sits within rb/2 positions of its pre-RoPE frame (RESULTS.md 2.5)."""
    p = np.arange(p0, p0 + n, dtype=np.int64)
    return origin + ((p - origin) // rb) * rb + rb // 2
