"""The KV cache contract: the model hands keys and values to the cache and asks it for attention.

The model never sees how keys are stored (bits, bases, blocks). One LayerCache per layer.

    append(k, v)      k: float32 (n, n_kv, head_dim) keys BEFORE RoPE (after any k-norm);
                      v: float32 (n, n_kv, head_dim). Stored at positions offset..offset+n-1;
                      the cache applies RoPE itself (self.rope) where its representation needs it.
    attend(q, scale)  q: float32 (n, n_head, head_dim) queries AFTER RoPE for the last n appended
                      tokens -> float32 (n, n_head, head_dim); causal, grouped-query
                      (head h reads kv head h // (n_head // n_kv)), and if window is set, query at
                      position p sees keys at positions > p - window only.
    trim(n)           forget every token at position >= n (rewind for chat edits).
    offset            tokens stored.
    nbytes(at=None)   bytes the cache holds now (all of it: codes, scales, bases, windows), or
                      would hold after `at` tokens.
    k_bits_per_elem(at=None) all-inclusive K bits per key element at the current offset (or at
                      `at` tokens, for start-up accounting).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..rope import RoPE


@dataclass(frozen=True)
class CacheSpec:
    """What a layer's cache needs to know about the layer."""
    layer: int
    n_head: int
    n_kv: int
    head_dim: int
    n_ctx: int             # maximum positions
    window: int | None     # sliding window (gemma3 local layers) or None
    rope: RoPE


class LayerCache(Protocol):
    spec: CacheSpec
    offset: int

    def append(self, k: np.ndarray, v: np.ndarray) -> None: ...
    def attend(self, q: np.ndarray, scale: float) -> np.ndarray: ...
    def trim(self, n: int) -> None: ...
    def nbytes(self, at: int | None = None) -> int: ...
    def k_bits_per_elem(self, at: int | None = None) -> float: ...
    # optional: append_attend(k, v, q, scale), one decode token's append then attend in one step


def append_attend(cache, k: np.ndarray, v: np.ndarray, q: np.ndarray, scale: float) -> np.ndarray:
    """A decode token through a layer cache: cache.append_attend where the cache has it (one native
    call), else append then attend."""
    f = getattr(cache, "append_attend", None)
    if f is not None:
        return f(k, v, q, scale)
    cache.append(k, v)
    return cache.attend(q, scale)


def causal_softmax_attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
                          q_pos0: int, k_pos0: int, window: int | None) -> np.ndarray:
    """Reference attention. q: (n, H, d) at positions q_pos0.., k/v: (t, KV, d) at k_pos0..
    -> (n, H, d). Causal; keys older than `window` positions masked."""
    n, H, d = q.shape
    t, KV, _ = k.shape
    g = H // KV
    qg = q.reshape(n, KV, g, d)                                                   # (n, KV, g, d)
    s = np.einsum("nkgd,tkd->kgnt", qg, k, optimize=True) * scale                 # (KV, g, n, t)
    qp = q_pos0 + np.arange(n)[:, None]
    kp = k_pos0 + np.arange(t)[None, :]
    mask = kp > qp
    if window is not None:
        mask |= kp <= qp - window
    s = np.where(mask[None, None], -np.inf, s)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    o = np.einsum("kgnt,tkd->nkgd", p, v, optimize=True)                          # (n, KV, g, d)
    return o.reshape(n, H, d).astype(np.float32)
