"""The llama-family block graph (llama, qwen2) and gemma3's variant of it, as flags on ModelArgs.

One decode step: embedding row -> per layer: norm -> q, k, v matvecs -> (q/k norm) -> RoPE(q)
-> cache.append(k, v) -> cache.attend(q) -> output projection -> (post norm) -> FFN -> logits.
The KV cache is the boundary: this module never sees how keys are stored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..config import ModelArgs
from ..kernels import QWeight
from ..kvcache.base import append_attend
from ..rope import RoPE


# ----------------------------------------------------------------------------------------------
# weights: views into the GGUF mmap, nothing copied

@dataclass
class LayerWeights:
    attn_norm: np.ndarray            # (n_embd,)
    wq: QWeight                      # (n_head*head_dim, n_embd)
    wk: QWeight                      # (n_kv*head_dim, n_embd)
    wv: QWeight                      # (n_kv*head_dim, n_embd)
    wo: QWeight                      # (n_embd, n_head*head_dim)
    ffn_norm: np.ndarray             # (n_embd,)
    w_gate: QWeight                  # (n_ff, n_embd)
    w_up: QWeight                    # (n_ff, n_embd)
    w_down: QWeight                  # (n_embd, n_ff)
    bq: np.ndarray | None = None     # (n_head*head_dim,) qwen2
    bk: np.ndarray | None = None     # (n_kv*head_dim,)
    bv: np.ndarray | None = None     # (n_kv*head_dim,)
    q_norm: np.ndarray | None = None     # (head_dim,) gemma3
    k_norm: np.ndarray | None = None     # (head_dim,)
    post_attn_norm: np.ndarray | None = None  # (n_embd,) gemma3
    post_ffn_norm: np.ndarray | None = None   # (n_embd,)


@dataclass
class Weights:
    tok_embd: QWeight                # (n_vocab, n_embd)
    output_norm: np.ndarray          # (n_embd,)
    output: QWeight                  # (n_vocab, n_embd); tok_embd when tied
    layers: list


def load_weights(g, a: ModelArgs) -> Weights:
    E, Q, KV, F = a.n_embd, a.q_dim, a.kv_dim, a.n_ff
    tok = g.weight("token_embd.weight", (a.n_vocab, E))
    out = g.weight("output.weight", (a.n_vocab, E)) if g.has("output.weight") else tok
    layers = []
    for i in range(a.n_layer):
        p = f"blk.{i}."
        lw = LayerWeights(
            attn_norm=g.vector(p + "attn_norm.weight", E),
            wq=g.weight(p + "attn_q.weight", (Q, E)), wk=g.weight(p + "attn_k.weight", (KV, E)),
            wv=g.weight(p + "attn_v.weight", (KV, E)), wo=g.weight(p + "attn_output.weight", (E, Q)),
            ffn_norm=g.vector(p + "ffn_norm.weight", E),
            w_gate=g.weight(p + "ffn_gate.weight", (F, E)), w_up=g.weight(p + "ffn_up.weight", (F, E)),
            w_down=g.weight(p + "ffn_down.weight", (E, F)),
        )
        if a.attn_bias:
            lw.bq = g.vector(p + "attn_q.bias", Q)
            lw.bk = g.vector(p + "attn_k.bias", KV)
            lw.bv = g.vector(p + "attn_v.bias", KV)
        if a.qk_norm:
            lw.q_norm = g.vector(p + "attn_q_norm.weight", a.head_dim)
            lw.k_norm = g.vector(p + "attn_k_norm.weight", a.head_dim)
        if a.post_norms:
            lw.post_attn_norm = g.vector(p + "post_attention_norm.weight", E)
            lw.post_ffn_norm = g.vector(p + "post_ffw_norm.weight", E)
        layers.append(lw)
    return Weights(tok, g.vector("output_norm.weight", E), out, layers)


# ----------------------------------------------------------------------------------------------
# small float ops (kernels: C where built, numpy otherwise)

def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x: (..., d) -> x / rms(x) * w."""
    return kernels.rmsnorm(x, w, eps)


# ----------------------------------------------------------------------------------------------
# the model

class Transformer:
    """forward(tokens) appends tokens to the caches and returns logits."""

    def __init__(self, args: ModelArgs, weights: Weights, n_ctx: int):
        self.args, self.w, self.n_ctx = args, weights, n_ctx
        a = args
        self.rope_global = RoPE(a.head_dim, a.rope_base, n_ctx, a.rope_neox, a.rope_scale)
        self.rope_local = (RoPE(a.head_dim, a.rope_base_local, n_ctx, a.rope_neox)
                           if a.rope_base_local else self.rope_global)
        self.caches: list = []
        self._decode = None                # kernels.decode_layers, built on the first decode step
        self.fused_decode = True           # False: decode steps take the per-op path (tests compare)

    def layer_rope(self, i: int) -> RoPE:
        return self.rope_local if self.args.layer_window[i] is not None else self.rope_global

    def set_caches(self, caches: list) -> None:
        self.caches = caches

    @property
    def offset(self) -> int:
        return self.caches[0].offset if self.caches else 0

    def forward(self, tokens, all_logits: bool = False, hidden_hook=None) -> np.ndarray:
        """tokens: int (n,) at positions offset..offset+n-1 -> float32 logits (n, n_vocab) if
        all_logits else (n_vocab,) for the last token."""
        a, w = self.args, self.w
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = tokens.shape[0]
        pos0 = self.offset
        if pos0 + n > self.n_ctx:
            raise ValueError(f"context full: {pos0 + n} tokens > n_ctx {self.n_ctx}")
        x = kernels.get_rows(w.tok_embd, tokens)                                     # (n, E)
        if a.embd_scale != 1.0:
            x *= np.float32(a.embd_scale)
        if n == 1 and hidden_hook is None and self.fused_decode:
            if self._decode is None:
                self._decode = kernels.decode_layers(a, w.layers) or False
            if self._decode:
                return self._decode_step(x)
        for i, lw in enumerate(w.layers):
            h = rmsnorm(x, lw.attn_norm, a.norm_eps)                                 # (n, E)
            q, k, v = kernels.matmul_many((lw.wq, lw.wk, lw.wv), h)                  # (n, H*d), (n, KV*d) x 2
            if lw.bq is not None:
                q += lw.bq
                k += lw.bk
                v += lw.bv
            q = q.reshape(n, a.n_head, a.head_dim)
            k = k.reshape(n, a.n_kv, a.head_dim)
            v = v.reshape(n, a.n_kv, a.head_dim)
            if lw.q_norm is not None:
                q = rmsnorm(q, lw.q_norm, a.norm_eps)
                k = rmsnorm(k, lw.k_norm, a.norm_eps)
            q = self.layer_rope(i).apply(q, pos0)
            cache = self.caches[i]
            # the cache stores k (pre-RoPE in, it rotates as its representation needs) and v
            cache.append(k, v)
            if hidden_hook is not None:
                hidden_hook(i, k, v, q)
            o = cache.attend(q, a.attn_scale).reshape(n, a.q_dim)                    # (n, H*d)
            o = kernels.matmul(lw.wo, o)                                             # (n, E)
            if lw.post_attn_norm is not None:
                o = rmsnorm(o, lw.post_attn_norm, a.norm_eps)
            x = x + o
            h = rmsnorm(x, lw.ffn_norm, a.norm_eps)
            g, u = kernels.matmul_many((lw.w_gate, lw.w_up), h)                      # (n, F) x 2
            o = kernels.matmul(lw.w_down, kernels.act_mul(g, u, a.act))              # (n, E)
            if lw.post_ffn_norm is not None:
                o = rmsnorm(o, lw.post_ffn_norm, a.norm_eps)
            x = x + o
        if not all_logits:
            x = x[-1:]
        x = rmsnorm(x, w.output_norm, a.norm_eps)
        logits = kernels.matmul(w.output, x)                                         # (m, V)
        return logits if all_logits else logits[0]

    def _decode_step(self, x: np.ndarray) -> np.ndarray:
        """One token, x (1, E): per layer the backend's two composed calls around cache attention
        (the same ops as forward's loop, in the same order)."""
        a, dl = self.args, self._decode
        pos = self.offset
        for i in range(a.n_layer):
            rope = self.layer_rope(i)
            q, k, v = dl.attn_in(i, x, rope.cos, rope.sin, pos, rope.neox)        # (1, H, d), (1, KV, d) x 2
            dl.ffn(i, append_attend(self.caches[i], k, v, q, a.attn_scale), x)     # x updated in place
        x = rmsnorm(x, self.w.output_norm, a.norm_eps)
        return kernels.matmul(self.w.output, x)[0]                                   # (V,)

    def trim(self, n: int) -> None:
        for c in self.caches:
            c.trim(n)
