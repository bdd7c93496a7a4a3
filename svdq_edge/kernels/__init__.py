"""The one dispatch point for compute kernels.

Model code calls `kernels.matmul(w, x)` etc. and never imports numba, cffi or CUDA. A backend is
chosen once, at import: `SVDQ_EDGE_BACKEND=c|numba|numpy` forces one; otherwise the C SIMD module
when it compiled, else Numba.

Backend module contract (ref.py, cpu_numba.py, cpu_c.py each provide it):
    matmul(data, qtype, x, out)      data: uint8 (rows, row_bytes) GGML blocks of W (rows, cols)
                                     x: float32 (n, cols), out: float32 (n, rows); out = x @ W.T
    get_rows(data, qtype, ids, out)  ids: int64 (m,), out: float32 (m, cols); dequantized rows
    set_threads(n)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..quants import LAYOUTS, row_bytes, row_cols, type_name


@dataclass(frozen=True)
class QWeight:
    """A weight matrix W (rows, cols) kept in its GGML blocks. data: uint8 (rows, row_bytes)."""
    name: str
    qtype: int
    rows: int
    cols: int
    data: np.ndarray

    def __post_init__(self):
        want = row_bytes(self.qtype, self.cols)
        if self.data.dtype != np.uint8 or self.data.shape != (self.rows, want):
            raise ValueError(
                f"{self.name}: {type_name(self.qtype)} data has shape {self.data.shape} "
                f"{self.data.dtype}, expected ({self.rows}, {want}) uint8")


_BACKENDS = ("c", "numba", "numpy")


def _load_backend(name: str):
    if name == "numpy":
        from . import ref as mod
    elif name == "numba":
        from . import cpu_numba as mod
    elif name == "c":
        from . import cpu_c as mod
    else:
        raise ValueError(f"SVDQ_EDGE_BACKEND={name!r}: expected one of {', '.join(_BACKENDS)}")
    return mod


BACKEND_NAME: str | None = None
_backend = None


def use_backend(name: str | None = None):
    """Choose the backend once: `name`, else $SVDQ_EDGE_BACKEND, else c -> numba -> numpy."""
    global BACKEND_NAME, _backend
    forced = (name or os.environ.get("SVDQ_EDGE_BACKEND", "")).strip().lower()
    if forced:
        BACKEND_NAME, _backend = forced, _load_backend(forced)
        return _backend
    for cand in ("c", "numba", "numpy"):
        try:
            BACKEND_NAME, _backend = cand, _load_backend(cand)
            return _backend
        except Exception:  # compiler or module missing: fall through to the next backend
            continue
    raise RuntimeError("no compute backend could be loaded")


def backend():
    return _backend if _backend is not None else use_backend()


def backend_name() -> str:
    backend()
    return BACKEND_NAME


def set_threads(n: int) -> None:
    backend().set_threads(int(n))


def quiet_blas() -> None:
    """Keep OpenBLAS's spinning idle threads off the cores the native kernels' threads need. When
    numpy loaded OpenBLAS before svdq_edge could shorten their spin (svdq_edge/__init__.py), run
    OpenBLAS on one thread instead (prefill 548 vs 587 tok/s with the short spin, 310 with neither).
    Only for the C backend: Numba's and numpy's kernels do not compete with BLAS that way."""
    global _blas_quiet
    from .. import BLAS_TIMEOUT_SET
    if BLAS_TIMEOUT_SET or _blas_quiet or backend_name() != "c":
        return
    _blas_quiet = True
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1, user_api="blas")


_blas_quiet = False


def cuda_backend():
    """The Numba CUDA kernels for --device cuda, imported only here. Raises SvdqError (one line)
    when numba-cuda is missing or no GPU is visible; NUMBA_ENABLE_CUDASIM=1 runs the simulator."""
    from .. import SvdqError
    try:
        from . import cuda_numba
    except ImportError as e:
        raise SvdqError(f"--device cuda needs numba-cuda (pip install 'svdq-edge[cuda]'): {e}") from None
    why = cuda_numba.unavailable_reason()
    if why:
        raise SvdqError(f"--device cuda: {why}")
    return cuda_numba


def matmul(w: QWeight, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x: float32 (n, cols) -> out: float32 (n, rows) = x @ W.T, straight from the GGML blocks."""
    if x.ndim == 1:
        x = x[None, :]
    if x.shape[1] != w.cols:
        raise ValueError(f"{w.name}: input has {x.shape[1]} columns, weight has {w.cols}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty((x.shape[0], w.rows), dtype=np.float32)
    backend().matmul(w.data, int(w.qtype), x, out)
    return out


def matmul_many(ws: tuple, x: np.ndarray) -> list:
    """The same x through several weights (q/k/v, gate/up) -> [x @ W.T for W in ws]. A decode step
    on the C backend quantizes x once and runs them in one call; elsewhere, one matmul each."""
    x = x[None, :] if x.ndim == 1 else x
    for w in ws:
        if x.shape[1] != w.cols:
            raise ValueError(f"{w.name}: input has {x.shape[1]} columns, weight has {w.cols}")
    outs = [np.empty((x.shape[0], w.rows), dtype=np.float32) for w in ws]
    mod = backend()
    if hasattr(mod, "matmul_many") and mod.matmul_many([w.data for w in ws], [int(w.qtype) for w in ws], x, outs):
        return outs
    return [matmul(w, x, o) for w, o in zip(ws, outs)]


LAYER_WEIGHTS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def repack_weights(weights, release=None) -> int:
    """Each layer weight, and the output matrix (the token embedding where tied), in the backend's
    decode layout where it has one (the C backend on avx512: Q5_0 -> Q5_0X4, Q8_0 -> Q8_0X4, as
    llama.cpp repacks for its CPU kernels), replacing the QWeight where it is held; release(view)
    is called on each copied part of the original so its mapped pages leave the process. Returns
    the bytes repacked. Weights stay as they are where the backend has no such layout."""
    fn = getattr(backend(), "repack", None)
    if fn is None:
        return 0

    def one(w: QWeight):
        r = fn(w.data, int(w.qtype), w.cols, release)
        return None if r is None else QWeight(w.name, r[1], w.rows, w.cols, r[0])

    done = 0
    for lw in weights.layers:
        for name in LAYER_WEIGHTS:
            r = one(getattr(lw, name))
            if r is not None:
                setattr(lw, name, r)
                done += r.data.nbytes
    tied = weights.output is weights.tok_embd
    r = one(weights.output)
    if r is not None:
        weights.output = r
        if tied:
            weights.tok_embd = r
        done += r.data.nbytes
    return done


def get_rows(w: QWeight, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """ids: int (m,) -> out: float32 (m, cols), the dequantized rows (embedding lookup)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= w.rows):
        raise ValueError(f"{w.name}: token id out of range 0..{w.rows - 1}")
    if out is None:
        out = np.empty((ids.shape[0], w.cols), dtype=np.float32)
    backend().get_rows(w.data, int(w.qtype), ids, out)
    return out


def quantize_rows(x: np.ndarray, qtype: int) -> np.ndarray:
    """x float32 (n, k) -> uint8 (n, row bytes): GGML Q8_0 / Q4_0 blocks of 32 (quantized V rows);
    the native kernel where the backend has it, else gguf-py's quantizer (its oracle)."""
    fn = getattr(backend(), "quantize_rows", None)
    if fn is None:
        from gguf.quants import quantize
        return quantize(np.ascontiguousarray(x, np.float32), qtype)
    return fn(x, qtype)


def topk_group_mask(s: np.ndarray, p0: int, P: int, g: int, k: int) -> None:
    """Token sparsity on scores s float32 (n, H, T), in place (svdq_ref.topk_group_mask): native where
    the backend has it (a numpy partition per query and group is slow at long context)."""
    if not 0 < k < P:
        return
    fn = getattr(backend(), "topk_group_mask", None)
    if fn is None or s.dtype != np.float32 or not s.flags.c_contiguous:
        from . import svdq_ref
        return svdq_ref.topk_group_mask(s, p0, P, g, k)
    fn(s, p0, P, g, k)


def dequantize_rows(data: np.ndarray, qtype: int, cols: int) -> np.ndarray:
    """uint8 (n, row bytes) GGML blocks -> float32 (n, cols)."""
    w = QWeight("rows", qtype, data.shape[0], cols, np.ascontiguousarray(data))
    return get_rows(w, np.arange(data.shape[0]))


def block_elems(qtype: int) -> int:
    return LAYOUTS[qtype][0]


# From this many queries per call (prefill batches), attention runs as BLAS matmuls on float32
# copies of the keys/values (or of the latent codes, dequantized once for all the queries); a
# single decode query reads the f16 / packed cache directly in the native kernels.
BATCH_QUERIES = 16
SCORE_BYTES = 16 << 20      # a prefill pass's (queries, H, T) float32 scores: at most this (peak RSS at long context)


def svdq_score(codes: list, scale: np.ndarray, mn: np.ndarray, widths: np.ndarray, qt: np.ndarray,
               block: int) -> np.ndarray:
    """Scores of packed SVDq tokens straight from their codes (see svdq_ref for the layout):
    qt float32 (m, r) projected queries, or (nrb, m, r) one per rotation block of the relative
    frame -> float32 (m, nblk*block)."""
    if qt.shape[-2] >= BATCH_QUERIES and scale.shape[0]:
        from . import svdq_ref
        z = svdq_ref.dequantize_all(codes, scale, mn, block)                           # (nblk*block, r)
        if qt.ndim == 2:
            return np.ascontiguousarray(qt, np.float32) @ z.T
        nrb = qt.shape[0]
        rb = svdq_ref.rot_block_of(nrb, scale.shape[0], block)
        sc = np.matmul(qt.astype(np.float32), z.reshape(nrb, rb, -1).transpose(0, 2, 1))   # (nrb, m, rb)
        return sc.transpose(1, 0, 2).reshape(qt.shape[1], nrb * rb)
    name = backend_name()
    if name == "numpy":
        from . import svdq_ref as mod
    elif name == "c":
        mod = backend()
    else:
        from . import svdq_numba as mod
    return mod.score(codes, scale, mn, widths, qt, block)


def scores_f16(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Raw GQA scores q float32 (n, H, d) . k float16 (T, KV, d) -> float32 (KV, n, g, T), laid out
    per KV head as softmax_av takes them: the native kernel reads f16 directly for a few queries;
    batches (and backends without it) are one BLAS product per KV head."""
    n, H, d = q.shape
    T, KV, _ = k.shape
    g = H // KV
    mod = backend()
    if n < BATCH_QUERIES and hasattr(mod, "qk_f16"):
        s = mod.qk_f16(q, np.ascontiguousarray(k))                             # (n, H, T)
        return np.ascontiguousarray(s.reshape(n, KV, g, T).transpose(1, 0, 2, 3))
    qs = q.reshape(n, KV, g, d).transpose(1, 0, 2, 3).reshape(KV, n * g, d)
    return np.matmul(qs, k.astype(np.float32).transpose(1, 2, 0)).reshape(KV, n, g, T)


def svdq_scorer(codes: list, scale: np.ndarray, mn: np.ndarray, widths: np.ndarray, block: int):
    """svdq_score with the packed blocks fixed (they change only when a block is flushed):
    returns qt -> scores. On the native backend a decode step skips the checks and pointer setup."""
    fast = backend().PackedScorer(codes, scale, mn, block) if backend_name() == "c" else None

    def run(qt: np.ndarray) -> np.ndarray:
        if fast is None or qt.shape[-2] >= BATCH_QUERIES:
            return svdq_score(codes, scale, mn, widths, qt, block)
        return fast(qt)
    # one-call decode attention (latent scores, f16 sinks and window, top-k, softmax.V) where the
    # backend has it, else None: see cpu_c.PackedScorer.attend
    run.attend = fast.attend if fast is not None else None
    return run


def score_pass_rows(H: int, T: int) -> int:
    """Queries per prefill pass: their (rows, H, T) float32 scores fit SCORE_BYTES."""
    return max(1, SCORE_BYTES // (4 * H * T))


def in_score_passes(q: np.ndarray, T: int, run) -> np.ndarray:
    """q (n, H, d) over T keys -> (n, H, d): run(q[i:j], i) on passes of score_pass_rows queries
    (one call when they all fit), so a long-context prefill chunk never holds (n, H, T) scores."""
    n, H, d = q.shape
    rows = score_pass_rows(H, T)
    if n <= rows:
        return run(q, 0)
    out = np.empty((n, H, d), np.float32)                                      # (n, H, d)
    for i in range(0, n, rows):
        out[i:i + rows] = run(q[i:i + rows], i)
    return out


def attention_f16(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, q_pos0: int, k_pos0: int,
                  window: int | None) -> np.ndarray:
    """Causal (optionally sliding-window) GQA attention over f16 keys/values.
    q: float32 (n, H, d); k, v: float16 (T, KV, d) at positions k_pos0.. -> float32 (n, H, d)."""
    mod = backend()
    n, T = q.shape[0], k.shape[0]
    if n > score_pass_rows(q.shape[1], T):
        return in_score_passes(q, T, lambda qi, i: attention_f16(qi, k, v, scale, q_pos0 + i, k_pos0, window))
    if n >= BATCH_QUERIES:
        return _attention_blas(q, k, v, scale, q_pos0, k_pos0, window)
    if not hasattr(mod, "qk_f16"):
        from ..kvcache.base import causal_softmax_attend
        return causal_softmax_attend(q, k.astype(np.float32), v.astype(np.float32), scale, q_pos0, k_pos0, window)
    # one query at the newest key sees every key from a window's start on: no mask to build
    unmasked = n == 1 and q_pos0 >= k_pos0 + T - 1 and (window is None or k_pos0 > q_pos0 - window)
    if unmasked and hasattr(mod, "attend_f16") and k.flags.c_contiguous and v.flags.c_contiguous:
        return mod.attend_f16(q * np.float32(scale), k, v)
    s = mod.qk_f16(q * np.float32(scale), k)                                   # (n, H, T)
    if not unmasked:
        np.copyto(s, np.float32(-np.inf), where=_attention_mask(n, T, q_pos0, k_pos0, window)[:, None, :])
    return mod.softmax_av_f16(s, v)


def dense_decoder():
    """The backend's one-call decode step of a dense f16 cache (rope and store k, store v, attend),
    a callable made per cache (it keeps pointers to that cache's arrays), or None."""
    cls = getattr(backend(), "DenseDecoder", None)
    return None if cls is None else cls()


def _attention_mask(n: int, T: int, q_pos0: int, k_pos0: int, window: int | None) -> np.ndarray:
    """(n, T) True where query q_pos0 + i must not see key k_pos0 + j: later, or out of the window."""
    qp = q_pos0 + np.arange(n)[:, None]
    kp = k_pos0 + np.arange(T)[None, :]
    mask = kp > qp
    if window is not None:
        mask |= kp <= qp - window
    return mask


def _attention_blas(q, k, v, scale, q_pos0, k_pos0, window):
    """attention_f16 for a batch of queries: scores by one matmul per KV head, the causal (and
    sliding-window) mask written in place, softmax.V (native where the backend has it)."""
    n, T = q.shape[0], k.shape[0]
    s = scores_f16(q * np.float32(scale), k)                                   # (KV, n, g, T)
    np.copyto(s, np.float32(-np.inf), where=_attention_mask(n, T, q_pos0, k_pos0, window)[None, :, None, :])
    return softmax_av(s, v, 1 if v.dtype == np.float16 else 0)


def _softmax_av_blas(s, v, n, H):
    """s: float32 (KV, n*g, T) scores (-inf masked), v: f16 or f32 (T, KV, d) -> (n, H, d)."""
    KV, d = v.shape[1], v.shape[2]
    m = s.max(axis=2, keepdims=True)                                           # (KV, n*g, 1)
    s -= np.maximum(m, np.float32(-3e38), out=m)        # a fully masked row: weights 0, output 0
    np.exp(s, out=s)
    den = s.sum(axis=2, keepdims=True)                                         # (KV, n*g, 1)
    np.maximum(den, np.float32(1e-30), out=den)
    o = np.matmul(s, v.astype(np.float32, copy=False).transpose(1, 0, 2)) / den   # (KV, n*g, d)
    return np.ascontiguousarray(o.reshape(KV, n, H // KV, d).transpose(1, 0, 2, 3)).reshape(n, H, d)


def softmax_av(scores: np.ndarray, v: np.ndarray, vtype: int, p0: int = 0, P: int = 0, k: int = 0) -> np.ndarray:
    """softmax.V of a batch of queries scored per KV head: scores float32 (KV, n, g, T) C-contiguous
    (-inf = masked; overwritten), v (T, KV, d) V rows of GGML type vtype: float32 (0), float16 (1), or
    Q8_0 / Q4_0 blocks (8, 2; uint8 rows); with 0 < k < P each query's KV head group keeps only its k
    best tokens of [p0, p0 + P) (topk_group_mask) -> (n, H, d). The native kernel computes weights
    and reads V rows only for the kept tokens; elsewhere the mask, then BLAS."""
    KV, n, g, T = scores.shape
    mod = backend()
    if vtype in (1, 2, 8) and hasattr(mod, "softmax_av"):
        return mod.softmax_av(scores, v, vtype, p0, P, k)
    topk_group_mask(scores.reshape(KV * n, g, T), p0, P, g, k)                  # one group per row block
    if vtype not in (0, 1):
        v, _ = batch_v_rows(v, vtype, row_cols(vtype, v.shape[2]))
    return _softmax_av_blas(scores.reshape(KV, n * g, T), v, n, KV * g)


def batch_v_rows(v: np.ndarray, vtype: int, d: int) -> tuple[np.ndarray, int]:
    """V rows (T, KV, .) of GGML type vtype as softmax_av reads them on this backend: as they are
    where it reads that type, else dequantized to float32 (T, KV, d) once for all score passes."""
    if vtype in (0, 1) or hasattr(backend(), "softmax_av"):
        return v, vtype
    T, KV = v.shape[:2]
    return dequantize_rows(v.reshape(T * KV, -1), vtype, d).reshape(T, KV, d), 0


def softmax_av_f16(scores: np.ndarray, v: np.ndarray) -> np.ndarray:
    """scores float32 (n, H, T) with -inf where masked (may be overwritten), v float16 (T, KV, d)
    (or float32: dequantized V rows, through the BLAS path) -> (n, H, d)."""
    n, H, T = scores.shape
    mod = backend()
    if n < BATCH_QUERIES and v.dtype == np.float16 and hasattr(mod, "softmax_av_f16"):
        return mod.softmax_av_f16(np.ascontiguousarray(scores, np.float32), v)
    # prefill batches, and every call on a backend without the kernel (numpy)
    KV = v.shape[1]
    s = np.ascontiguousarray(scores.reshape(n, KV, H // KV, T).transpose(1, 0, 2, 3), np.float32).reshape(KV, -1, T)
    return _softmax_av_blas(s, v, n, H)


# -- small per-token ops (C where the backend has them, else the numpy oracles in ref.py) ----------

def _small(name: str):
    fn = getattr(backend(), name, None)
    if fn is None:
        from . import ref
        fn = getattr(ref, name)
    return fn


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x: float32 (..., d) -> x / rms(x) * w."""
    return _small("rmsnorm")(x, w, eps)


def act_mul(g: np.ndarray, u: np.ndarray, act: str) -> np.ndarray:
    """Gated FFN: act(g) * u, act "silu" or "gelu_tanh"."""
    return _small("act_mul")(g, u, act)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, pos0: int, neox: bool) -> np.ndarray:
    """x: float32 (n, heads, d) at positions pos0.. rotated by the tables cos/sin (n_ctx, d/2)."""
    if pos0 < 0 or pos0 + x.shape[0] > cos.shape[0]:
        raise ValueError(f"rope: positions {pos0}..{pos0 + x.shape[0]} outside the table of {cos.shape[0]}")
    return _small("rope")(x, cos, sin, pos0, neox)


def decode_layers(args, layers):
    """The backend's composed decode-token layer calls (cpu_c.DecodeLayers: norm, q/k/v, biases,
    q/k norms and RoPE in one call; output projection, FFN and residuals in another), or None where
    the backend has none (the model then runs its per-op path)."""
    cls = getattr(backend(), "DecodeLayers", None)
    return None if cls is None else cls(args, layers)
