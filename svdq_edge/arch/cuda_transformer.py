"""`--device cuda`: the block graph of transformer.py run on an NVIDIA GPU with Numba CUDA kernels.

Weights are uploaded once in their GGML blocks; activations, RoPE tables, the dense f16 caches and
the SVDq caches (packed codes, scales, bases, f16 sink/window keys, f16 values) live on the device
and are allocated once, at construction and in set_caches(). A decode step sends the token id in
(a kernel argument) and copies the logits (n_vocab floats) out.

Same math as transformer.py for llama, qwen2 and gemma3 (embedding scale, q/k norms, post norms,
GELU-tanh, sliding-window local layers with their own RoPE base). Differences: matmuls use float32
activations (the CPU backends quantize activations to 8-bit blocks; the numpy backend does not),
and SVDq supports the absolute post-RoPE frame without token sparsity (the default relative frame is
switched to it by device_cache_options, with a note).

Status: run only under Numba's CUDA simulator (tests/test_cuda_sim.py compares its logits with the
CPU path on a tiny random model); not yet run or timed on a GPU.
"""
from __future__ import annotations

import numpy as np

from .. import SvdqError, kernels
from ..config import ModelArgs
from ..rope import RoPE
from .transformer import Weights

N_BATCH = 512        # tokens per device forward chunk (model.N_BATCH feeds at most this many)
QB = 16              # query rows per attention pass: scores scratch is (QB, n_head, n_ctx)
LB = 16              # logits rows copied out per pass when all logits are wanted


def check_device(device: str, cache_options) -> str:
    """Validate --device before anything is loaded; SvdqError (one line) when it cannot run."""
    device = (device or "cpu").lower()
    if device == "cpu":
        return device
    if device != "cuda":
        raise SvdqError(f"--device {device}: expected cpu or cuda")
    kernels.cuda_backend()
    if cache_options is not None:
        o = cache_options
        if o.ctk not in ("svdq", "f16") or o.ctv != "f16":
            raise SvdqError(f"--device cuda: -ctk {o.ctk} -ctv {o.ctv} is not supported on the GPU "
                            f"(use -ctk svdq or f16 with -ctv f16)")
        if o.ctk == "svdq" and (o.svdq.pre_rope or o.svdq.basis_source == "prompt"):
            raise SvdqError("--device cuda: the GPU SVDq cache supports the calibrated post-RoPE basis "
                            "(drop --svdq-rope pre / --svdq-basis-source prompt)")
    return device


def device_cache_options(device: str, cache_options):
    """The GPU SVDq kernels code keys in the absolute post-RoPE frame and attend to every token: the
    default relative frame becomes post-RoPE (spread basis) and token sparsity is off there, said
    once on stderr; anything else unchanged."""
    o = cache_options
    if device != "cuda" or o is None or o.ctk != "svdq" or (o.svdq.rope != "relative" and not o.svdq.topk):
        return o
    import sys
    from dataclasses import replace
    print("svdq-edge: --device cuda: the GPU SVDq cache stores keys in the absolute post-RoPE frame "
          "(--svdq-rope post) and attends to every token (--svdq-topk 0)", file=sys.stderr)
    return replace(o, svdq=replace(o.svdq, rope="post" if o.svdq.rope == "relative" else o.svdq.rope, topk=None))


# ----------------------------------------------------------------------------------------------
# device weights

class DWeight:
    """A weight W (rows, cols) on the device. data: uint8 (rows, row_bytes) GGML blocks."""

    def __init__(self, k, w):
        k.check_weight(w.name, int(w.qtype), w.rows, w.cols)
        self.name, self.qtype, self.rows, self.cols = w.name, int(w.qtype), w.rows, w.cols
        self.data = k.cuda.to_device(np.ascontiguousarray(w.data))


def _vec(k, v):
    return None if v is None else k.cuda.to_device(np.ascontiguousarray(v, dtype=np.float32))


class DLayer:
    def __init__(self, k, lw):
        self.attn_norm = _vec(k, lw.attn_norm)                  # (E,)
        self.wq, self.wk, self.wv, self.wo = (DWeight(k, w) for w in (lw.wq, lw.wk, lw.wv, lw.wo))
        self.ffn_norm = _vec(k, lw.ffn_norm)                    # (E,)
        self.w_gate, self.w_up, self.w_down = (DWeight(k, w) for w in (lw.w_gate, lw.w_up, lw.w_down))
        self.bq, self.bk, self.bv = _vec(k, lw.bq), _vec(k, lw.bk), _vec(k, lw.bv)   # (Q,), (KV*d,) qwen2
        self.q_norm, self.k_norm = _vec(k, lw.q_norm), _vec(k, lw.k_norm)            # (d,) gemma3
        self.post_attn_norm = _vec(k, lw.post_attn_norm)        # (E,) gemma3
        self.post_ffn_norm = _vec(k, lw.post_ffn_norm)          # (E,)


# ----------------------------------------------------------------------------------------------
# device caches: same positions and flush rule as kvcache/dense.py and kvcache/svdq.py

class CudaDenseCache:
    """Post-RoPE K and V in f16 on the device. k, v: float16 (cap, n_kv, head_dim); position p at
    row p % cap. Global layers: cap = n_ctx. Sliding-window layers: a ring of window + N_BATCH rows."""

    def __init__(self, k, spec):
        self.k, self.spec = k, spec
        w = spec.window
        self.cap = spec.n_ctx if w is None else min(spec.n_ctx, w + N_BATCH)
        self.kc = k.cuda.device_array((self.cap, spec.n_kv, spec.head_dim), np.float16)   # (cap, KV, d)
        self.vc = k.cuda.device_array((self.cap, spec.n_kv, spec.head_dim), np.float16)   # (cap, KV, d)
        self.offset = 0

    def matches(self, cpu_cache) -> bool:
        return type(cpu_cache).__name__ == "DenseCache" and cpu_cache.spec == self.spec

    def reset(self) -> None:
        self.offset = 0

    def append(self, kd, vd, n: int) -> None:
        """kd (post-RoPE), vd: float32 (N_BATCH, KV*d) device rows 0..n-1."""
        if self.offset + n > self.spec.n_ctx:
            raise ValueError(f"context full: {self.offset + n} tokens > n_ctx {self.spec.n_ctx}")
        self.k.store_f16(kd, n, self.offset, 0, self.cap, self.kc)
        self.k.store_f16(vd, n, self.offset, 0, self.cap, self.vc)
        self.offset += n

    def attend(self, rt, q, n: int, out, scale: float) -> None:
        """Attention for the last n appended tokens: q float32 (N_BATCH, H*d) rows 0..n-1 -> out rows."""
        k, a = self.k, rt.args
        q0 = self.offset - n
        win = self.spec.window or 0
        for i0 in range(0, n, QB):
            nq = min(QB, n - i0)
            k_lo = max(0, q0 + i0 - win + 1) if win else 0
            k.attention_scores_f16(q, i0, nq, a.n_head, q0, k_lo, win, self.kc, 0, self.cap, rt.s)
            k.softmax(rt.s, nq, a.n_head, q0, i0, k_lo, win, scale)
            k.attend_v_f16(rt.s, nq, a.n_head, q0, i0, k_lo, win, self.vc, 0, self.cap, out)

    def trim(self, n: int) -> None:
        if n >= self.offset:
            return
        w = self.spec.window
        # a ring keeps positions >= offset - cap; the next query (at n) needs n - w + 1 onwards
        if w is not None and n - w + 1 < self.offset - self.cap and n > 0:
            raise ValueError("cannot rewind past the overwritten part of a sliding-window ring")
        self.offset = max(0, n)

    def nbytes(self, at: int | None = None) -> int:
        return 2 * min(self.offset if at is None else at, self.cap) * self.spec.n_kv * self.spec.head_dim * 2

    def k_bits_per_elem(self, at: int | None = None) -> float:
        return 16.0


class CudaSVDqCache:
    """The SVDq K cache on the device (post-RoPE basis). Positions: [0, S) sinks in f16 |
    [S, win_start) packed blocks of B | [win_start, offset) the f16 window; flush rule of
    kvcache/svdq.py (before an append, whole blocks leave the window while it keeps >= window tokens).

    kf: float16 (S + capw, KV, d)  sink rows, then a ring of capw window rows
    v:  float16 (n_ctx, KV, d)      every token's value
    codes per width (8, 4, 2, 1): uint8 (G, max_blk, n_w, B*w/8); scale, mn: float16 (G, max_blk, r)
    V: float32 (G, D, r), mu: float32 (G, D)  the basis (f16-rounded values, as the CPU cache uses)
    z: float32 (nf_max, G, B, r)             latent scratch for flushing
    """

    def __init__(self, k, cpu):
        self.k, self.spec, self.cfg = k, cpu.spec, cpu.cfg
        sp, cfg = self.spec, self.cfg
        self.G, self.D, self.B, self.r, self.S = cpu.G, cpu.D, cfg.block, cpu.r, cfg.sinks
        self.counts = tuple(int(c) for c in cpu.counts)
        self.h_V, self.h_mu = cpu.Vf, cpu.muf                    # host copies, to recognize the same basis
        self.capw = cfg.window + cfg.block + N_BATCH
        self.max_blk = max(1, (sp.n_ctx - self.S) // self.B)
        self.nf_max = (N_BATCH + cfg.window) // self.B + 2
        cu = k.cuda
        self.kf = cu.device_array((self.S + self.capw, sp.n_kv, sp.head_dim), np.float16)
        self.v = cu.device_array((sp.n_ctx, sp.n_kv, sp.head_dim), np.float16)
        self.codes = k.alloc_codes(self.G, self.max_blk, self.counts, self.B)
        self.scale = cu.device_array((self.G, self.max_blk, self.r), np.float16)
        self.mn = cu.device_array((self.G, self.max_blk, self.r), np.float16)
        self.V = cu.to_device(np.ascontiguousarray(cpu.Vf))
        self.mu = cu.to_device(np.ascontiguousarray(cpu.muf))
        self.z = cu.device_array((self.nf_max, self.G, self.B, self.r), np.float32)
        self.basis_nbytes = cpu.V16.nbytes + cpu.mu16.nbytes
        self.reset()

    def matches(self, cpu_cache) -> bool:
        return (type(cpu_cache).__name__ == "SVDqCache" and cpu_cache.spec == self.spec
                and cpu_cache.cfg == self.cfg and np.array_equal(cpu_cache.Vf, self.h_V)
                and np.array_equal(cpu_cache.muf, self.h_mu))

    def reset(self) -> None:
        self.offset, self.nblk, self.win_start = 0, 0, self.S

    def _flush(self) -> None:
        B = self.B
        nf = 0
        while self.offset - (self.win_start + nf * B) - B >= self.cfg.window:
            nf += 1
        while nf:
            m = min(nf, self.nf_max, self.max_blk - self.nblk)
            if m <= 0:
                raise ValueError(f"context full: no room for SVDq block {self.nblk}")
            self.k.svdq_project(self.kf, self.S, self.capw, self.win_start, m, self.V, self.mu, self.z)
            self.k.svdq_pack(self.z, m, self.counts, self.nblk, self.codes, self.scale, self.mn)
            self.nblk += m
            self.win_start += m * B
            nf -= m

    def append(self, kd, vd, n: int) -> None:
        if self.offset + n > self.spec.n_ctx:
            raise ValueError(f"context full: {self.offset + n} tokens > n_ctx {self.spec.n_ctx}")
        self._flush()
        if self.offset + n - self.win_start > self.capw:
            raise ValueError(f"SVDq window ring overflow ({self.offset + n - self.win_start} > {self.capw})")
        self.k.store_f16(kd, n, self.offset, self.S, self.capw, self.kf)
        self.k.store_f16(vd, n, self.offset, 0, self.spec.n_ctx, self.v)
        self.offset += n

    def attend(self, rt, q, n: int, out, scale: float) -> None:
        k, a = self.k, rt.args
        q0 = self.offset - n
        H = a.n_head
        grp = H // a.n_kv
        skip = (self.S, self.win_start)
        for i0 in range(0, n, QB):
            nq = min(QB, n - i0)
            # f16 sinks and window, then the packed tokens from their codes
            k.attention_scores_f16(q, i0, nq, H, q0, 0, 0, self.kf, self.S, self.capw, rt.s, skip)
            if self.nblk:
                k.svdq_qproj(q, i0, nq, H, grp, self.cfg.per_head, self.V, self.mu, rt.qt, rt.qbase)
                k.svdq_scores(rt.qt, rt.qbase, nq, H, grp, self.cfg.per_head, self.nblk, self.S,
                              self.counts, self.codes, self.scale, self.mn, rt.s)
            k.softmax(rt.s, nq, H, q0, i0, 0, 0, scale)
            k.attend_v_f16(rt.s, nq, H, q0, i0, 0, 0, self.v, 0, self.spec.n_ctx, out)

    def trim(self, n: int) -> None:
        from ..kvcache.svdq import trim_packed
        trim_packed(self, n)

    def k_nbytes(self, at: int | None = None) -> int:
        from ..kvcache.svdq import k_nbytes
        return k_nbytes(self, at)

    def nbytes(self, at: int | None = None) -> int:
        T = self.offset if at is None else at
        return self.k_nbytes(at) + T * self.spec.n_kv * self.spec.head_dim * 2

    def k_bits_per_elem(self, at: int | None = None) -> float:
        n = max(self.offset if at is None else at, 1)
        return 8.0 * self.k_nbytes(at) / (n * self.spec.n_kv * self.spec.head_dim)


# ----------------------------------------------------------------------------------------------
# the model

class CudaTransformer:
    """forward(tokens) appends tokens to the device caches and returns logits (host float32)."""

    def __init__(self, args: ModelArgs, weights: Weights, n_ctx: int):
        k = kernels.cuda_backend()
        self.k, self.args, self.n_ctx = k, args, n_ctx
        a = args
        cu = k.cuda
        # RoPE tables as the CPU path computes them, uploaded once
        self.rope_global = RoPE(a.head_dim, a.rope_base, n_ctx, a.rope_neox, a.rope_scale)
        self.rope_local = (RoPE(a.head_dim, a.rope_base_local, n_ctx, a.rope_neox)
                           if a.rope_base_local else self.rope_global)
        self._tables = {}
        for r in (self.rope_global, self.rope_local):
            if id(r) not in self._tables:
                self._tables[id(r)] = (cu.to_device(r.cos), cu.to_device(r.sin))     # (n_ctx, d/2) each
        # weights, uploaded once (a tied output shares the embedding's device copy)
        try:
            self.tok_embd = DWeight(k, weights.tok_embd)
            self.output = self.tok_embd if weights.output is weights.tok_embd else DWeight(k, weights.output)
        except ValueError as e:
            raise SvdqError(f"--device cuda: {e}") from None
        self.output_norm = _vec(k, weights.output_norm)
        self.layers = [DLayer(k, lw) for lw in weights.layers]
        # activations for up to N_BATCH tokens
        NB, E, Q, KVD, F, V = N_BATCH, a.n_embd, a.q_dim, a.kv_dim, a.n_ff, a.n_vocab
        self.x = cu.device_array((NB, E), np.float32)        # residual stream
        self.h = cu.device_array((NB, E), np.float32)        # normed input of a block
        self.t = cu.device_array((NB, E), np.float32)        # block output before its post norm
        self.q = cu.device_array((NB, Q), np.float32)
        self.kk = cu.device_array((NB, KVD), np.float32)
        self.vv = cu.device_array((NB, KVD), np.float32)
        self.o = cu.device_array((NB, Q), np.float32)        # attention output
        self.g = cu.device_array((NB, F), np.float32)
        self.u = cu.device_array((NB, F), np.float32)
        self.ids = cu.device_array((NB,), np.int32)
        self.h_ids = cu.pinned_array((NB,), np.int32)
        self.logits = cu.device_array((LB, V), np.float32)
        self.h_logits = cu.pinned_array((LB, V), np.float32)
        # attention scratch: scores (QB, H, n_ctx), SVDq projected queries (QB, H, D) and q.mean (QB, H)
        self.s = cu.device_array((QB, a.n_head, n_ctx), np.float32)
        self.qt = cu.device_array((QB, a.n_head, max(a.kv_dim, 1)), np.float32)
        self.qbase = cu.device_array((QB, a.n_head), np.float32)
        self.caches: list = []

    def layer_rope(self, i: int) -> RoPE:
        return self.rope_local if self.args.layer_window[i] is not None else self.rope_global

    def set_caches(self, cpu_caches: list) -> None:
        """Mirror the caches the factory built (their specs, options and bases) on the device;
        buffers are reused when they match, so a reset allocates nothing."""
        new = []
        for i, c in enumerate(cpu_caches):
            old = self.caches[i] if i < len(self.caches) else None
            if old is not None and old.matches(c):
                old.reset()
                new.append(old)
            elif type(c).__name__ == "SVDqCache":
                new.append(CudaSVDqCache(self.k, c))
            elif type(c).__name__ == "DenseCache" and c.dtype == np.float16:
                new.append(CudaDenseCache(self.k, c.spec))
            else:
                raise SvdqError(f"--device cuda: layer {i} cache {type(c).__name__} is not supported on the GPU")
        self.caches = new

    @property
    def offset(self) -> int:
        return self.caches[0].offset if self.caches else 0

    def trim(self, n: int) -> None:
        for c in self.caches:
            c.trim(n)

    def forward(self, tokens, all_logits: bool = False, hidden_hook=None) -> np.ndarray:
        """tokens: int (n,) at positions offset.. -> float32 logits (n, n_vocab) if all_logits else
        (n_vocab,) for the last token. Runs in chunks of N_BATCH tokens."""
        if hidden_hook is not None:
            raise SvdqError("--device cuda: hidden_hook is not supported (calibration runs on the CPU)")
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = tokens.shape[0]
        a = self.args
        if self.offset + n > self.n_ctx:
            raise ValueError(f"context full: {self.offset + n} tokens > n_ctx {self.n_ctx}")
        if n and (tokens.min() < 0 or tokens.max() >= a.n_vocab):
            raise ValueError(f"token id out of range 0..{a.n_vocab - 1}")
        out = np.empty((n, a.n_vocab), np.float32) if all_logits else None
        last = None
        for s in range(0, n, N_BATCH):
            last = self._chunk(tokens[s:s + N_BATCH], out[s:s + N_BATCH] if all_logits else None)
        return out if all_logits else last

    def _chunk(self, ids: np.ndarray, out_rows) -> np.ndarray | None:
        k, a = self.k, self.args
        n = ids.shape[0]
        pos0 = self.offset
        E, H, KV, d = a.n_embd, a.n_head, a.n_kv, a.head_dim
        # embedding rows: one token goes in as a kernel argument, a batch through the ids buffer
        tok = int(ids[0]) if n == 1 else -1
        if n > 1:
            self.h_ids[:n] = ids
            self.ids.copy_to_device(self.h_ids)
        k.get_rows(self.tok_embd.data, self.tok_embd.qtype, E, self.ids, n, self.x, a.embd_scale, tok)
        for i, L in enumerate(self.layers):
            k.rmsnorm(self.x, L.attn_norm, a.norm_eps, self.h, n=n)
            self._mm(L.wq, self.h, n, self.q, bias=L.bq)
            self._mm(L.wk, self.h, n, self.kk, bias=L.bk)
            self._mm(L.wv, self.h, n, self.vv, bias=L.bv)
            if L.q_norm is not None:
                k.rmsnorm(self.q, L.q_norm, a.norm_eps, self.q, n=n)
                k.rmsnorm(self.kk, L.k_norm, a.norm_eps, self.kk, n=n)
            cos, sin = self._tables[id(self.layer_rope(i))]
            k.rope(self.q, n, H, d, cos, sin, pos0, a.rope_neox)
            k.rope(self.kk, n, KV, d, cos, sin, pos0, a.rope_neox)
            cache = self.caches[i]
            cache.append(self.kk, self.vv, n)
            cache.attend(self, self.q, n, self.o, a.attn_scale)
            self._residual(L.wo, self.o, n, L.post_attn_norm)
            k.rmsnorm(self.x, L.ffn_norm, a.norm_eps, self.h, n=n)
            self._mm(L.w_gate, self.h, n, self.g)
            self._mm(L.w_up, self.h, n, self.u)
            k.act_mul(self.g, self.u, n, k.ACT_GELU_TANH if a.act == "gelu_tanh" else k.ACT_SILU)
            self._residual(L.w_down, self.g, n, L.post_ffn_norm)
        if out_rows is None:
            # only the last token's logits
            k.rmsnorm(self.x, self.output_norm, a.norm_eps, self.h, i0=n - 1, n=1)
            self._mm(self.output, self.h, 1, self.logits, x0=n - 1)
            self.logits[0].copy_to_host(self.h_logits[0])
            return np.array(self.h_logits[0])
        for l0 in range(0, n, LB):
            m = min(LB, n - l0)
            k.rmsnorm(self.x, self.output_norm, a.norm_eps, self.h, i0=l0, n=m)
            self._mm(self.output, self.h, m, self.logits, x0=l0)
            self.logits.copy_to_host(self.h_logits)
            out_rows[l0:l0 + m] = self.h_logits[:m]
        return None

    def _mm(self, w: DWeight, x, n: int, out, *, bias=None, x0: int = 0, add: bool = False) -> None:
        self.k.matmul(w.data, w.qtype, w.rows, w.cols, x, n, out, x0=x0, bias=bias, add=add)

    def _residual(self, w: DWeight, x, n: int, post_norm) -> None:
        """x_resid += W x (after the block's post norm when the model has one)."""
        if post_norm is None:
            self._mm(w, x, n, self.x, add=True)
        else:
            self._mm(w, x, n, self.t)
            self.k.rmsnorm(self.t, post_norm, self.args.norm_eps, self.x, n=n, add=True)
