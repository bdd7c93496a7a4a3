"""Rotary position embedding tables, computed once per (base, head_dim, n_ctx)."""
from __future__ import annotations

import numpy as np


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
        n = x.shape[0]
        c = self.cos[pos0:pos0 + n, None, :]                                         # (n, 1, half)
        s = self.sin[pos0:pos0 + n, None, :]
        half = self.head_dim // 2
        out = np.empty_like(x)
        if self.neox:
            a, b = x[..., :half], x[..., half:]
            out[..., :half] = a * c - b * s
            out[..., half:] = a * s + b * c
        else:
            a, b = x[..., 0::2], x[..., 1::2]
            out[..., 0::2] = a * c - b * s
            out[..., 1::2] = a * s + b * c
        return out

    def apply_at(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x: float32 (n, heads, head_dim) at arbitrary positions (n,) -> rotated copy."""
        c = self.cos[positions][:, None, :]
        s = self.sin[positions][:, None, :]
        half = self.head_dim // 2
        out = np.empty_like(x)
        if self.neox:
            a, b = x[..., :half], x[..., half:]
            out[..., :half] = a * c - b * s
            out[..., half:] = a * s + b * c
        else:
            a, b = x[..., 0::2], x[..., 1::2]
            out[..., 0::2] = a * c - b * s
            out[..., 1::2] = a * s + b * c
        return out
