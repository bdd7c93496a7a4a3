"""The SVDq K cache: keys projected onto a per-head (or per-layer) SVD basis, the leading latent
channels kept with more bits than the tail, codes bit-packed per block of tokens, and attention
scores computed from the packed codes (never rebuilding K in the post-RoPE mode).

Token layout by position: [0, S) sinks in f16 | [S, S + nblk*B) packed blocks | the f16 window of
recent tokens up to offset. Values are stored f16 for every token.

Frames (cfg.rope): "relative" (default) codes a packed key rotated back by the centre c of its
rot_block-token block, R(c)^T k = R(p - c) k_pre, so a block is scored with R(c)^T q projected
once per block; "post" codes the post-RoPE key as it is (one projection per step); "pre" codes the
pre-RoPE key and rebuilds and rotates every packed key per step.
"""
from __future__ import annotations

import threading

import numpy as np

from .. import kernels
from ..kernels import svdq_ref
from ..quants import row_bytes
from .base import CacheSpec
from .basis import LayerBasis, compute_basis, query_moment, schedule_widths
from ..rope import block_centers
from .svdq_config import SVDqConfig

V_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}     # -ctv -> GGML type of the V rows


REBUILD_BLOCKS = 16          # packed blocks rebuilt per step of _rebuilt_keys (bounds its temporaries)
SCORE_GROW = 4096            # tokens of headroom when the shared decode score scratch grows


class _DecodeScratch(threading.local):
    """One decode score buffer (H*T,) float32 for every layer of every cache in a thread: layers run
    one after another, and one per layer cost 24 x 1.8 MiB (doubled when grown) at Qwen's 32k."""
    scores = np.empty(0, np.float32)


_SCRATCH = _DecodeScratch()


class SVDqCache:
    def __init__(self, spec: CacheSpec, basis: LayerBasis, cfg: SVDqConfig, ctv: str = "f16"):
        cfg.validate()
        self.spec, self.basis, self.cfg = spec, basis, cfg
        # V rows: f16, or GGML Q8_0 / Q4_0 blocks of 32 (-ctv), read by the decode kernel as they are
        self.vtype = V_TYPES.get(ctv)
        if self.vtype is None or (self.vtype != 1 and spec.head_dim % 32):
            raise ValueError(f"-ctv {ctv}: the SVDq cache stores V as f16, q8_0 or q4_0 (the last two: head_dim a multiple of 32)")
        self.offset = 0
        H, KV, d = spec.n_head, spec.n_kv, spec.head_dim
        self.G = KV if cfg.per_head else 1
        self.D = d if cfg.per_head else KV * d
        self.B = cfg.block
        self.rb = cfg.rb                                          # rotation block (relative frame) or 0
        self.nblk = 0
        self.win_start = cfg.sinks                                # position of the first window token
        self._cap_blk = 0
        self._cap_tok = 0
        self.kfull = np.empty((0, KV, d), np.float16)             # (cap_tok, KV, d) sinks + window keys, by position
        self.v = (np.empty((0, KV, d), np.float16) if self.vtype == 1                         # (cap_tok, KV, d)
                  else np.empty((0, KV, row_bytes(self.vtype, d)), np.uint8))            # (cap_tok, KV, row bytes)
        # prompt basis: nothing is packed until `prompt_tokens` keys are held; then the basis is
        # fitted to them (ranked by the queries seen so far) and the backlog is flushed
        self.pending = basis is None
        self._qsum = np.zeros((self.G, self.D, self.D)) if self.pending else None   # (G, D, D) sum of q q^T
        self._qn = 0
        if not self.pending:
            self._set_basis(basis)

    def _set_basis(self, basis: LayerBasis) -> None:
        if basis.mean.shape != (self.G, self.D):
            raise ValueError(f"layer {self.spec.layer}: basis is {basis.mean.shape}, cache needs ({self.G}, {self.D})")
        if self.nblk:
            raise ValueError("the SVDq basis cannot change once blocks are packed")
        self.basis = basis
        self.counts = svdq_ref.width_counts(basis.widths)
        self.r = basis.r
        # basis kept as f16 (accounted) and a float32 working copy of the same values
        self.V16 = basis.V.astype(np.float16)                     # (G, D, r)
        self.mu16 = basis.mean.astype(np.float16)                 # (G, D)
        self.Vf = self.V16.astype(np.float32)
        self.basis_nbytes = self.V16.nbytes + self.mu16.nbytes
        self.muf = self.mu16.astype(np.float32)
        # per-layer basis: each KV head's rows of V and mu side by side, so one matmul of the
        # queries gives their latent projections and q.mu
        KV, d = self.spec.n_kv, self.spec.head_dim
        self.Vmu = (np.concatenate([self.Vf[0].reshape(KV, d, self.r), self.muf[0].reshape(KV, d, 1)], axis=2)
                    if self.G == 1 else None)                # (KV, d, r+1)
        self._scorer = None
        self._cap_blk = 0
        self.codes = [np.empty((self.G, 0, n, self.B * w // 8), np.uint8)
                      for w, n in zip(svdq_ref.PACK_WIDTHS, self.counts)]   # per width (G, cap_blk, n_w, B*w/8)
        self.scale = np.empty((self.G, 0, self.r), np.float16)    # (G, cap_blk, r)
        self.mn = np.empty((self.G, 0, self.r), np.float16)       # (G, cap_blk, r)
        self.pending = False
        self._qsum = None

    def _fit_prompt_basis(self) -> None:
        """Fit the basis to the keys held (every key past the sinks) and the queries seen."""
        S = self.cfg.sinks
        n = self.offset - self.win_start
        k = self.kfull[S:S + n].astype(np.float32)                                # (n, KV, d)
        qm = self._qsum / self._qn if self._qn else None
        if self.rb:
            # relative frame: each key rotated back by its block's centre; the query moment (held
            # pre-RoPE) spread over the distances a query meets blocks at
            rope = self.spec.rope
            k = rope.apply_at(k, -block_centers(S, n, self.rb, S))
            if qm is not None:
                qm = rope.spread_moment(qm, rope.offsets(1, self.cfg.spread, rope.n_ctx))
        elif not self.cfg.pre_rope and self.cfg.spread > 1:
            # over the rotation phases of the whole context, not only positions S..S+n
            rope = self.spec.rope
            offs = rope.offsets(n + S, self.cfg.spread, rope.n_ctx)
            k = rope.spread(k, offs)
            qm = rope.spread_moment(qm, offs) if qm is not None else None
        k = self._group(k)                                                         # (n', G, D)
        self._set_basis(compute_basis(k, self.cfg, qm))

    # -- storage ----------------------------------------------------------------------------------
    def _grow(self, arr, cap, axis=0):
        shape = list(arr.shape)
        shape[axis] = cap
        new = np.empty(shape, arr.dtype)
        new[(slice(None),) * axis + (slice(0, arr.shape[axis]),)] = arr
        return new

    def _reserve(self, n_tok: int) -> None:
        if n_tok > self.spec.n_ctx:
            raise ValueError(f"context full: {n_tok} tokens > n_ctx {self.spec.n_ctx}")
        if n_tok > self._cap_tok:
            cap = min(max(n_tok, 2 * self._cap_tok, 256), self.spec.n_ctx)
            self.v = self._grow(self.v, cap)
            self._cap_tok = cap
        # full-precision keys only for sinks and the window; stored by position in a buffer that
        # is compacted on flush (positions win_start.. map to rows S..)
        need_k = self.cfg.sinks + (n_tok - self.win_start)
        if need_k > self.kfull.shape[0]:
            self.kfull = self._grow(self.kfull, max(need_k, 2 * self.kfull.shape[0], 64))

    def _keys_in(self, k: np.ndarray, pos0: int) -> np.ndarray:
        """Keys as stored: post-RoPE (default) or pre-RoPE."""
        return k if self.cfg.pre_rope else self.spec.rope.apply(k, pos0)

    def _group(self, k: np.ndarray) -> np.ndarray:
        """(n, KV, d) -> (n, G, D)."""
        return k.reshape(k.shape[0], self.G, self.D)

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        n = k.shape[0]
        self._flush()
        self._reserve(self.offset + n)
        ks = self._keys_in(k, self.offset)
        if self.vtype == 1:
            self.v[self.offset:self.offset + n] = v
        else:
            self.v[self.offset:self.offset + n] = kernels.quantize_rows(
                v.reshape(-1, v.shape[-1]), self.vtype).reshape(n, v.shape[1], -1)
        S = self.cfg.sinks
        # positions < S go to the sink rows, the rest to window rows S + (p - win_start)
        ns = max(0, min(n, S - self.offset))
        self.kfull[self.offset:self.offset + ns] = ks[:ns]
        if ns < n:
            base = S + (self.offset + ns - self.win_start)
            self.kfull[base:base + n - ns] = ks[ns:]
        self.offset += n

    def _flush(self) -> None:
        """Move whole blocks from the window into packed codes, keeping >= window tokens."""
        S, B = self.cfg.sinks, self.B
        if self.pending:
            if self.offset - self.win_start < self.cfg.prompt_tokens:
                return
            self._fit_prompt_basis()
        while self.offset - self.win_start - B >= self.cfg.window:
            rows = slice(S, S + B)
            k = self.kfull[rows].astype(np.float32)                        # (B, KV, d)
            if self.rb:
                k = self.spec.rope.apply_at(k, -block_centers(self.win_start, B, self.rb, S))
            z = np.einsum("bgd,gdr->bgr", self._group(k) - self.muf[None], self.Vf)   # (B, G, r)
            if self.nblk == self._cap_blk:
                cap = max(8, 2 * self._cap_blk)
                self.codes = [self._grow(c, cap, 1) for c in self.codes]
                self.scale = self._grow(self.scale, cap, 1)
                self.mn = self._grow(self.mn, cap, 1)
                self._cap_blk = cap
            for g in range(self.G):
                packed, s, m = svdq_ref.quantize_block(z[:, g, :], self.basis.widths)
                for c, p in zip(self.codes, packed):
                    c[g, self.nblk] = p
                self.scale[g, self.nblk] = s
                self.mn[g, self.nblk] = m
            self.nblk += 1
            self._scorer = None
            nwin = self.offset - self.win_start - B
            self.kfull[S:S + nwin] = self.kfull[S + B:S + B + nwin]
            self.win_start += B

    # -- attention --------------------------------------------------------------------------------
    def _packed_scores(self, q: np.ndarray, out: np.ndarray) -> np.ndarray:
        """q: (n, H, d) post-RoPE -> out (n, H, nblk*B): scores of the packed tokens."""
        n, H, d = q.shape
        KV = self.spec.n_kv
        grp = H // KV
        if self.nblk == 0:
            return out
        if self._rebuilds(n):
            t = self.nblk * self.B
            sc = self._rebuilt_scores(q, self._rebuilt_keys(), np.empty((KV, n * grp, t), np.float32))
            out[...] = sc.reshape(KV, n, grp, t).transpose(1, 0, 2, 3).reshape(n, H, t)
            return out
        if not self.cfg.per_head and not self.cfg.pre_rope:
            # per-layer basis: head h reads rows kv*d..(kv+1)*d of V and mu (its KV head's slot)
            r = self.r
            if self.rb:
                # relative frame: each rotation block j scores with R(c_j)^T q projected
                c = self.cfg.sinks + np.arange(0, self.nblk * self.B, self.rb) + self.rb // 2   # (nrb,) centres
                nrb = c.shape[0]
                qr = self.spec.rope.apply_at(np.broadcast_to(q, (nrb, n, H, d)).reshape(nrb * n, H, d),
                                             -np.repeat(c, n))                                # (nrb*n, H, d)
                qm = np.matmul(qr.reshape(nrb, n, KV, grp, d), self.Vmu).reshape(nrb, n * H, r + 1)
                sc = self._decode_scorer()(np.ascontiguousarray(qm[..., :r]))                  # (n*H, P)
                sc = sc.reshape(n * H, nrb, self.rb) + qm[..., r].T[:, :, None]              # + q.R(c)mu
                out[...] = sc.reshape(n, H, -1)
                return out
            qm = np.matmul(q.reshape(n, KV, grp, d), self.Vmu).reshape(n * H, r + 1)  # (n*H, r+1): q V | q.mu
            sc = self._decode_scorer()(qm[:, :r])                                           # (n*H, nblk*B)
            np.add(sc.reshape(n, H, -1), qm[:, r:].reshape(n, H, 1), out=out)      # one pass: + q.mu, placed
            return out
        for g in range(self.G):
            heads = range(g * grp, (g + 1) * grp) if self.cfg.per_head else range(H)
            hs = list(heads)
            qg = q[:, hs, :]                                                        # (n, h, d)
            if not self.cfg.per_head:
                # per-layer basis: place each head's query in its KV head's slot of the D vector
                qpad = np.zeros((n, len(hs), self.D), np.float32)
                for j, h in enumerate(hs):
                    kv = h // grp
                    qpad[:, j, kv * d:(kv + 1) * d] = q[:, h, :]
                qg = qpad
            codes = [c[g, :self.nblk] for c in self.codes]                          # contiguous per group
            if self.cfg.pre_rope:
                out[:, hs, :] = self._prerope_scores(qg, g, codes)
                continue
            qt = qg.reshape(-1, self.D) @ self.Vf[g]                                 # (n*h, r)
            base = qg.reshape(-1, self.D) @ self.muf[g]                              # (n*h,)
            sc = kernels.svdq_score(codes, self.scale[g, :self.nblk], self.mn[g, :self.nblk],
                                    self.basis.widths, qt, self.B)                   # (n*h, nblk*B)
            out[:, hs, :] = (sc + base[:, None]).reshape(n, len(hs), -1)
        return out

    def _rebuilds(self, n: int) -> bool:
        """Whether n queries score rebuilt packed keys: a prefill chunk (or a per-head basis in the
        relative frame, which has no latent path) rebuilds them once (T*r*D multiply-adds) and
        scores them as f16 keys are scored (n*H*T*d), cheaper than n*H*T*r in the latent space
        when r > d."""
        return not self.cfg.pre_rope and (n >= kernels.BATCH_QUERIES or bool(self.rb and self.cfg.per_head))

    def _rebuilt_keys(self) -> np.ndarray:
        """The packed keys rebuilt, (KV, nblk*B, d) float32, at their positions (post-RoPE frame, or
        the relative frame's keys rotated forward by their block centres). Rebuilt REBUILD_BLOCKS
        blocks at a time, so the temporaries stay small at any depth."""
        KV, d, B = self.spec.n_kv, self.spec.head_dim, self.B
        t = self.nblk * B
        kp = np.empty((KV, t, d), np.float32)                                          # (KV, t, d)
        pos = block_centers(self.cfg.sinks, t, self.rb, self.cfg.sinks) if self.rb else None   # (t,)
        for b0 in range(0, self.nblk, REBUILD_BLOCKS):
            b1 = min(self.nblk, b0 + REBUILD_BLOCKS)
            k = np.empty(((b1 - b0) * B, KV, d), np.float32)                           # (c, KV, d)
            for g in range(self.G):
                z = svdq_ref.dequantize_all([c[g, b0:b1] for c in self.codes], self.scale[g, b0:b1],
                                            self.mn[g, b0:b1], B)                      # (c, r)
                kg = z @ self.Vf[g].T + self.muf[g]                                    # (c, D)
                if self.cfg.per_head:
                    k[:, g] = kg
                else:
                    k[...] = kg.reshape(-1, KV, d)
            if self.rb:
                k = self.spec.rope.apply_at(k, pos[b0 * B:b1 * B])
            kp[:, b0 * B:b1 * B] = k.transpose(1, 0, 2)
        return kp

    @staticmethod
    def _rebuilt_scores(q: np.ndarray, kp: np.ndarray, out: np.ndarray) -> np.ndarray:
        """q (n, H, d) . rebuilt packed keys kp (KV, t, d) -> out (KV, n*g, t), a view with unit
        column stride (the packed columns of a pass's scores): one BLAS call per KV head, in place."""
        n, H, d = q.shape
        KV = kp.shape[0]
        qg = np.ascontiguousarray(q.reshape(n, KV, H // KV, d).transpose(1, 0, 2, 3)).reshape(KV, -1, d)
        for kv in range(KV):
            np.matmul(qg[kv], kp[kv].T, out=out[kv])
        return out

    def _prerope_scores(self, qg, g, codes):
        """Pre-RoPE basis: rebuild each packed key (r*D multiply-adds), rotate it to its position,
        then dot: the cost the post-RoPE mode avoids."""
        S, B = self.cfg.sinks, self.B
        n, h, D = qg.shape
        out = np.empty((n, h, self.nblk * B), np.float32)
        d = self.spec.head_dim
        for b in range(self.nblk):
            z = svdq_ref.dequantize_block([c[b] for c in codes], self.scale[g, b], self.mn[g, b],
                                          self.basis.widths, B)                       # (B, r)
            k = z @ self.Vf[g].T + self.muf[g]                                        # (B, D)
            k = self.spec.rope.apply(k.reshape(B, -1, d), S + b * B).reshape(B, D)
            out[:, :, b * B:(b + 1) * B] = qg @ k.T
        return out

    def attend(self, q: np.ndarray, scale: float) -> np.ndarray:
        n, H, d = q.shape
        S = min(self.cfg.sinks, self.offset)
        q0 = self.offset - n
        t_pack = self.nblk * self.B
        n_win = max(0, self.offset - self.win_start)
        if self.pending and self.cfg.rank_by == "scores" and not self.cfg.pre_rope:
            # relative frame: the moment of the pre-RoPE queries (spread when the basis is fitted)
            qq = self.spec.rope.apply_at(q, -np.arange(q0, q0 + n)) if self.rb else q
            M, rows_ = query_moment(qq, self.spec.n_kv, self.cfg.per_head)
            self._qsum += M
            self._qn += rows_
        q = q * np.float32(scale)                                                     # scores come out scaled
        # one native call per decode step, packed blocks or not (short contexts: the window only)
        if n == 1 and S == self.cfg.sinks and not self.pending and self.Vmu is not None and not self.cfg.pre_rope:
            fast = self._decode_scorer().attend
            if fast is not None:
                need = H * (S + t_pack + n_win)
                if _SCRATCH.scores.size < need:
                    _SCRATCH.scores = np.empty(need + H * SCORE_GROW, np.float32)         # (H*T,) shared
                rope = self.spec.rope
                rot = (self.rb, rope.cos, rope.sin, rope.neox) if self.rb else None
                return fast(q[0], self.Vmu, self.kfull, S, n_win, self.v, self._topk(t_pack), _SCRATCH.scores,
                            rot, self.vtype)[None]
        # a prefill chunk: queries in passes of bounded score memory, the packed keys rebuilt once
        # for all passes where that path scores them, V rows read as held where the backend can
        kp = self._rebuilt_keys() if t_pack and self._rebuilds(n) else None
        v, vtype = kernels.batch_v_rows(self.v[:self.offset], self.vtype, d)           # (T, KV, .)
        return kernels.in_score_passes(q, S + t_pack + n_win,
                                       lambda qi, i: self._attend_rows(qi, q0 + i, kp, v, vtype))

    def _attend_rows(self, q: np.ndarray, q0: int, kp: np.ndarray | None, v: np.ndarray, vtype: int) -> np.ndarray:
        """Scaled queries q (n, H, d) at positions q0.. over every held token, V rows v (T, KV, .) of
        GGML type vtype -> (n, H, d); kp: the packed keys rebuilt by _rebuilt_keys, or None to score
        them in the latent space."""
        n, H, d = q.shape
        KV = self.spec.n_kv
        grp = H // KV
        S = min(self.cfg.sinks, self.offset)
        t_pack = self.nblk * self.B
        n_win = max(0, self.offset - self.win_start)
        # sink rows [0, S) and window rows from cfg.sinks on: one slice once all sinks are held
        rows = slice(0, S + n_win) if S == self.cfg.sinks else np.r_[0:S, self.cfg.sinks:self.cfg.sinks + n_win]
        win_pos = np.arange(self.win_start, self.win_start + n_win)
        if self.cfg.pre_rope:
            kf = self.spec.rope.apply_at(self.kfull[rows].astype(np.float32), np.concatenate([np.arange(S), win_pos]))
            qs = q.reshape(n, KV, grp, d).transpose(1, 0, 2, 3)
            sf = np.ascontiguousarray(np.matmul(qs, kf.transpose(1, 2, 0)[:, None]))  # (KV, n, g, S+win)
        else:
            sf = kernels.scores_f16(q, self.kfull[rows])                              # (KV, n, g, S+win)
        # scores by position, sinks | packed | window, per KV head: each head's (n*grp, T) block is
        # one matrix that BLAS writes the packed columns of in place
        T = S + t_pack + n_win
        if t_pack == 0:
            scores = sf                                                                 # (KV, n, g, T)
        else:
            scores = np.empty((KV, n, grp, T), np.float32)                              # (KV, n, g, T)
            scores[..., :S] = sf[..., :S]
            scores[..., S + t_pack:] = sf[..., S:]
            if kp is not None:
                self._rebuilt_scores(q, kp, scores.reshape(KV, n * grp, T)[:, :, S:S + t_pack])
            else:
                packed = self._packed_scores(q, np.empty((n, H, t_pack), np.float32))    # (n, H, t)
                scores[..., S:S + t_pack] = packed.reshape(n, KV, grp, t_pack).transpose(1, 0, 2, 3)
        if n > 1:
            # causal mask (a single decode query sees every stored token). Packed keys were
            # flushed by an earlier append, so all precede the batch: only sinks and window mask
            qpos = q0 + np.arange(n)                                                   # (n,)
            for cols, kpos in ((scores[..., :S], np.arange(S)), (scores[..., S + t_pack:], win_pos)):
                mask = kpos[None, :] > qpos[:, None]                                   # (n, t)
                if mask.any():
                    np.copyto(cols, np.float32(-np.inf), where=mask[None, :, None, :])
        # top-k, softmax and V accumulation: V rows are read only for kept tokens
        return kernels.softmax_av(scores, v, vtype, S, t_pack, self._topk(t_pack))

    def _topk(self, t_pack: int) -> int:
        """Packed tokens kept per KV head group by --svdq-topk (a count or a fraction); 0 = all."""
        if not self.cfg.topk or t_pack == 0:
            return 0
        k = int(self.cfg.topk if self.cfg.topk >= 1 else max(1, round(self.cfg.topk * t_pack)))
        return k if k < t_pack else 0

    def _decode_scorer(self):
        if self._scorer is None:            # the packed blocks changed (flush): set the kernel up again
            self._scorer = kernels.svdq_scorer([c[0, :self.nblk] for c in self.codes], self.scale[0, :self.nblk],
                                               self.mn[0, :self.nblk], self.basis.widths, self.B)
        return self._scorer

    # -- bookkeeping ------------------------------------------------------------------------------
    def trim(self, n: int) -> None:
        trim_packed(self, n)

    def nbytes(self, at: int | None = None) -> int:
        """Bytes held for the current tokens (or `at` tokens): codes, scales, minima, basis, mean,
        f16 keys, V rows (f16 or blocks)."""
        T = self.offset if at is None else at
        return self.k_nbytes(at) + T * self.spec.n_kv * self.v.shape[2] * self.v.itemsize

    def k_nbytes(self, at: int | None = None) -> int:
        """K bytes for the tokens held now, or (at=T) for T tokens under the same flush rule."""
        return k_nbytes(self, at)

    def k_bits_per_elem(self, at: int | None = None) -> float:
        """All-inclusive K bits per key element (codes, scales, minima, basis, mean, f16 window)."""
        n = max(self.offset if at is None else at, 1)
        return 8.0 * self.k_nbytes(at) / (n * self.spec.n_kv * self.spec.head_dim)


def trim_packed(cache, n: int) -> None:
    """Rewind an SVDq cache (CPU or CUDA) to n tokens: only the full-precision window can be undone."""
    if n >= cache.offset:
        return
    if n < cache.win_start and cache.nblk:
        raise ValueError("cannot rewind into packed SVDq blocks")
    cache.offset = max(0, n)


def k_nbytes(c, at: int | None = None) -> int:
    """SVDq K accounting shared by the CPU and CUDA caches (attributes spec, cfg, B, G, r, counts,
    nblk, offset, basis_nbytes): codes + f16 scales and minima + f16 sinks and window + f16 basis
    and mean, for the tokens held or for `at` tokens under the flush rule (nblk = (T-S-W) // B)."""
    S, B, W = c.cfg.sinks, c.B, c.cfg.window
    T = c.offset if at is None else at
    nblk = c.nblk if at is None else max(0, (T - S - W) // B)
    full = (T - nblk * B) * c.spec.n_kv * c.spec.head_dim * 2
    if getattr(c, "pending", False):
        # prompt basis not fitted yet: only f16 keys are held; a projection counts a full-rank
        # basis and the code budget (the fit keeps codes + scales + minima within it)
        if at is None:
            return full
        w = schedule_widths(c.cfg.bits, c.D) if c.cfg.bits is not None else None
        bits = (w.sum() + 0.5 * np.count_nonzero(w)) / c.D if w is not None else c.cfg.budget
        return int(np.ceil(nblk * B * c.G * c.D * bits / 8)) + full + 2 * c.G * c.D * (c.D + 1)
    codes = sum(nblk * c.G * n * (B * w // 8) for w, n in zip(svdq_ref.PACK_WIDTHS, c.counts))
    sm = 2 * nblk * c.G * c.r * 2
    return codes + sm + full + c.basis_nbytes
