"""C backend: the cffi module built from native/ on first import (cached per source hash in
~/.cache/svdq-edge/native/), raising ImportError when no compiler works so that the dispatcher
falls back to Numba. Implements the backend contract plus the SVDq latent score."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from . import svdq_ref
from ..quants import Q5_0X4, Q8_0X4, row_bytes, row_cols

NATIVE = Path(__file__).resolve().parent.parent.parent / "native"
PATHS = {"scalar": 0, "avx2": 1, "avx512": 2, "neon": 3, "neon_dot": 4}
ERRORS = {-1: "unsupported tensor type", -2: "row size does not match type and columns",
          -3: "bad size", -4: "row id out of range", -5: "out of memory"}


def _build_dir() -> Path:
    h = hashlib.sha256()
    for f in sorted(NATIVE.glob("*.[ch]")) + [NATIVE / "build.py"]:
        h.update(f.name.encode() + f.read_bytes())
    h.update(sys.version.encode())
    base = Path(os.environ.get("SVDQ_EDGE_NATIVE_CACHE") or Path.home() / ".cache" / "svdq-edge" / "native")
    return base / h.hexdigest()[:16]


def _load():
    if not (NATIVE / "build.py").exists():
        raise ImportError("native/ sources not found")
    d = _build_dir()
    so = next(iter(d.glob("_svdq_native*.so")), None) if d.exists() else None
    if so is None:
        sys.path.insert(0, str(NATIVE))
        try:
            import build as native_build
            d.mkdir(parents=True, exist_ok=True)
            import contextlib
            import io
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                so = Path(native_build.ffibuilder().compile(tmpdir=str(d)))
        except Exception as e:
            raise ImportError(f"the C kernels did not build ({type(e).__name__}: {e}); using Numba") from None
        finally:
            sys.path.remove(str(NATIVE))
    spec = importlib.util.spec_from_file_location("_svdq_native", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_mod = _load()
ffi, lib = _mod.ffi, _mod.lib


def _ptr(a: np.ndarray, ctype: str):
    if not a.flags.c_contiguous:
        raise ValueError(f"array of shape {a.shape} is not C-contiguous")
    return ffi.cast(ctype, ffi.from_buffer(a))


def _held_ptr(store: dict, name: str, a: np.ndarray, ctype: str):
    """Pointer to a long-lived buffer (a cache's arrays, RoPE tables, score scratch), made once per
    buffer: store holds the buffer beside its pointer, so `is` identifies it."""
    hit = store.get(name)
    if hit is None or hit[0] is not a:
        hit = store[name] = (a, _ptr(a, ctype))
    return hit[1]


def _ok(rc: int, what: str) -> None:
    if rc != 0:
        raise ValueError(f"{what}: {ERRORS.get(rc, f'error {rc}')}")


def _tables_match(cos: np.ndarray, sin: np.ndarray, d: int) -> bool:
    """RoPE tables a kernel can read: float32 (n_ctx, d/2) each, C-contiguous."""
    return (cos.shape == sin.shape and cos.shape[1:] == (d // 2,) and cos.dtype == np.float32
            and sin.dtype == np.float32 and cos.flags.c_contiguous and sin.flags.c_contiguous)


def _check_out(out: np.ndarray, shape) -> None:
    if out.shape != tuple(shape) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"output must be float32 C-contiguous {tuple(shape)}, got {out.dtype} {out.shape}")


PREFILL_MIN_TOKENS = 4
# weight types whose AVX2 / AVX-512 int8 kernels tile tokens (native/kernels_impl.h, mm_rows_tiled):
# Q8_0, Q5_0, Q4_K, Q6_K. Their prefill stays on the int8 kernels, which measured faster than
# dequantized panels + BLAS; the other types and the scalar / NEON paths keep BLAS.
PREFILL_TILED = {8, 6, 12, 14, Q5_0X4, Q8_0X4}   # the X4 layouts: un-repacked into rows for the tiles
PREFILL_INT8 = True             # False: every type through BLAS (for comparisons)
PANEL_BYTES = 64 << 20          # dequantized weight panel for batched prefill (f32)
_scratch: dict = {}             # name -> reusable buffer, grown on demand (allocate once)


def _buf(name: str, size: int) -> np.ndarray:
    b = _scratch.get(name)
    if b is None or b.size < size:
        b = _scratch[name] = np.empty(size, np.float32)
    return b[:size]


def matmul(data: np.ndarray, qtype: int, x: np.ndarray, out: np.ndarray) -> None:
    rows, rb = data.shape
    n, k = x.shape
    _check_out(out, (n, rows))
    x = np.ascontiguousarray(x, np.float32)
    if n >= PREFILL_MIN_TOKENS and not (PREFILL_INT8 and qtype in PREFILL_TILED and _tiled_path()):
        # batched prefill: dequantize W in panels of whole rows (most matrices in one panel) into a
        # reused buffer and let BLAS multiply all tokens: outT (rows, n) = W_panel @ x.T
        step = max(16, min(rows, PANEL_BYTES // (4 * k)))
        outT = _buf("outT", rows * n).reshape(rows, n)                      # (rows, n)
        xT = np.ascontiguousarray(x.T)                                      # (k, n)
        for r0 in range(0, rows, step):
            m = min(step, rows - r0)
            panel = _buf("panel", m * k).reshape(m, k)                      # (m, k)
            _ok(lib.svdq_dequant_rows(_ptr(data, "unsigned char *"), rows, rb, qtype, k, r0, r0 + m,
                                      _ptr(panel, "float *")), "dequant")
            np.matmul(panel, xT, out=outT[r0:r0 + m])
        out[...] = outT.T
        return
    _ok(lib.svdq_matmul(_ptr(data, "unsigned char *"), rows, rb, qtype, _ptr(x, "float *"), n, k,
                        _ptr(out, "float *")), "matmul")


FLOAT_TYPES = {0, 1, 30}        # F32, F16, BF16: through svdq_matmul


def matmul_many(datas: list, qtypes: list, x: np.ndarray, outs: list) -> bool:
    """Decode matvecs of several quantized weights on the same x (n < PREFILL_MIN_TOKENS): x quantized
    once, one parallel region. Returns False (nothing done) where it does not apply."""
    n, k = x.shape
    if n >= PREFILL_MIN_TOKENS or len(datas) > 8 or any(t in FLOAT_TYPES for t in qtypes):
        return False
    for d, o in zip(datas, outs):
        _check_out(o, (n, d.shape[0]))
    x = np.ascontiguousarray(x, np.float32)
    nw = len(datas)
    w = ffi.new("const unsigned char *[]", [_ptr(d, "unsigned char *") for d in datas])
    rows = ffi.new("long long[]", [d.shape[0] for d in datas])
    rbs = ffi.new("long long[]", [d.shape[1] for d in datas])
    ts = ffi.new("int[]", [int(t) for t in qtypes])
    op = ffi.new("float *[]", [_ptr(o, "float *") for o in outs])
    _ok(lib.svdq_matmul_multi(nw, w, rows, rbs, ts, _ptr(x, "float *"), n, k, op), "matmul")
    return True


REPACK = os.environ.get("SVDQ_EDGE_REPACK", "1") != "0"    # 0: keep weights as in the file (A/B)


def repack(data: np.ndarray, qtype: int, cols: int, release=None):
    """A weight's rows in the decode layout of its type where the active path has a kernel for it
    (avx512: Q5_0 -> Q5_0X4, Q8_0 -> Q8_0X4; cols a multiple of 128) -> (new data uint8 (rows, rb),
    new qtype), else None. The copy is the same size; release(rows_view), where given, is called on
    each part of the original once it is copied, so a large matrix never sits in memory twice."""
    if not REPACK or qtype not in (6, 8) or cols % 128 or lib.svdq_active_path() != PATHS["avx512"]:  # Q5_0, Q8_0
        return None
    rows, rb = data.shape
    if rows == 0:
        return None
    out = np.empty((rows, rb), np.uint8)                                    # (rows, rb)
    step = max(1, (16 << 20) // rb)                                         # 16 MiB of rows at a time
    t = -1
    for r0 in range(0, rows, step):
        part = np.ascontiguousarray(data[r0:r0 + step])
        t = lib.svdq_repack(_ptr(part, "unsigned char *"), part.shape[0], rb, qtype, cols,
                            _ptr(out[r0:r0 + step], "unsigned char *"))
        if t < 0:
            _ok(t, "repack")
        if release is not None:
            release(data[:r0 + part.shape[0]])
    return out, t


def _tiled_path() -> bool:
    return lib.svdq_active_path() in (PATHS["avx2"], PATHS["avx512"])


def get_rows(data: np.ndarray, qtype: int, ids: np.ndarray, out: np.ndarray) -> None:
    rows, rb = data.shape
    ids = np.ascontiguousarray(ids, np.int64)
    _check_out(out, (ids.shape[0], out.shape[1]))
    _ok(lib.svdq_get_rows(_ptr(data, "unsigned char *"), rows, rb, qtype, out.shape[1],
                          _ptr(ids, "long long *"), ids.shape[0], _ptr(out, "float *")), "get_rows")


class PackedScorer:
    """The native latent-score call for a fixed set of packed blocks: shape checks and buffer
    pointers are done once, so a decode step pays only for the query and the output."""

    def __init__(self, codes: list, scale: np.ndarray, mn: np.ndarray, B: int):
        nblk = scale.shape[0]
        cs = [np.ascontiguousarray(c) for c in codes]
        for c, w in zip(cs, (8, 4, 2, 1)):
            if c.shape[0] != nblk or c.shape[2] != B * w // 8:
                raise ValueError(f"codes for width {w} have shape {c.shape}, expected ({nblk}, n, {B * w // 8})")
        self.r = sum(c.shape[1] for c in cs)
        if scale.shape != (nblk, self.r) or mn.shape != (nblk, self.r):
            raise ValueError("scale/min shapes do not match the codes")
        sc = np.ascontiguousarray(scale).view(np.uint16)
        m_ = np.ascontiguousarray(mn).view(np.uint16)
        self._keep = (cs, sc, m_)                           # the pointers below point into these
        self.nblk, self.B = nblk, B
        self._ptrs: dict = {}
        self._args = (*[_ptr(c, "unsigned char *") for c in cs], *[c.shape[1] for c in cs],
                      _ptr(sc, "unsigned short *"), _ptr(m_, "unsigned short *"), nblk)

    def _p(self, name: str, a: np.ndarray, ctype: str):
        return _held_ptr(self._ptrs, name, a, ctype)

    def attend(self, q: np.ndarray, vmu: np.ndarray, kf: np.ndarray, sinks: int, nwin: int, v: np.ndarray,
               topk: int, scores: np.ndarray, rot=None, vtype: int = 1) -> np.ndarray:
        """One decode query per head over the packed blocks plus f16 sinks and window, in one call.
        q: float32 (H, d) scaled; vmu: float32 (KV, d, r+1) basis rows | mean per KV head;
        kf: float16 (>= sinks+nwin, KV, d) sink rows then window rows; v: float16 (>= T, KV, d) by
        position, or with vtype 8 / 2 uint8 (>= T, KV, row bytes) GGML Q8_0 / Q4_0 rows; topk: packed
        tokens kept per KV head group (0 = all); scores: float32 scratch (>= H*T,);
        rot: None (absolute frame) or (rb, cos, sin, neox) for the relative frame, cos/sin float32
        (n_ctx, d/2) RoPE tables (svdq_ref.decode_attend). Returns (H, d)."""
        H, d = q.shape
        KV = vmu.shape[0]
        T = sinks + self.nblk * self.B + nwin
        vrow = (KV, d) if vtype == 1 else (KV, row_bytes(vtype, d) if d % 32 == 0 else -1)
        if (vmu.shape != (KV, d, self.r + 1) or vmu.dtype != np.float32 or kf.shape[1:] != (KV, d)
                or v.shape[1:] != vrow or kf.shape[0] < sinks + nwin or v.shape[0] < T or not v.flags.c_contiguous
                or kf.dtype != np.float16 or v.dtype != (np.float16 if vtype == 1 else np.uint8)
                or scores.dtype != np.float32
                or scores.ndim != 1 or scores.size < H * T or H % KV):
            raise ValueError("latent attend: buffer shapes do not match")
        q = np.ascontiguousarray(q, np.float32)
        out = np.empty((H, d), np.float32)
        if rot is None:
            rb, ct, st, n_ctx, neox = 0, ffi.NULL, ffi.NULL, 0, 1
        else:
            rb, cos, sin, neox = rot
            if not _tables_match(cos, sin, d):
                raise ValueError("latent attend: RoPE tables do not match")
            ct, st, n_ctx = self._p("cos", cos, "float *"), self._p("sin", sin, "float *"), cos.shape[0]
        _ok(lib.svdq_latent_attend(_ptr(q, "float *"), H, KV, d, self._p("vmu", vmu, "float *"), *self._args,
                                   self.B, self._p("kf", kf, "unsigned short *"), sinks, nwin,
                                   self._p("v", v, "unsigned char *"), int(vtype), topk, ct, st, n_ctx, rb,
                                   int(bool(neox)),
                                   self._p("scores", scores, "float *"), _ptr(out, "float *")), "latent attend")
        return out

    def __call__(self, qt: np.ndarray) -> np.ndarray:
        qt = np.ascontiguousarray(qt, np.float32)
        out = np.empty((qt.shape[-2], self.nblk * self.B), np.float32)
        if self.nblk == 0:
            return out
        if qt.ndim not in (2, 3) or qt.shape[-1] != self.r:
            raise ValueError(f"queries {qt.shape} do not match r={self.r}")
        # (nrb, m, r): one projection per rotation block (the relative frame)
        rb = 0 if qt.ndim == 2 else svdq_ref.rot_block_of(qt.shape[0], self.nblk, self.B)
        _ok(lib.svdq_latent_score(*self._args, _ptr(qt, "float *"), qt.shape[-2], self.B, rb, _ptr(out, "float *")),
            "latent score")
        return out


def score(codes: list, scale: np.ndarray, mn: np.ndarray, widths, qt: np.ndarray, B: int) -> np.ndarray:
    """SVDq packed latent-K scores (contract of svdq_ref.score)."""
    return PackedScorer(codes, scale, mn, B)(qt)


def topk_group_mask(s: np.ndarray, p0: int, P: int, g: int, k: int) -> None:
    """svdq_ref.topk_group_mask in C, in place on s float32 (n, H, T) C-contiguous."""
    n, H, T = s.shape
    if s.dtype != np.float32 or not s.flags.c_contiguous or g <= 0 or H % g or p0 < 0 or P < 0 or p0 + P > T:
        raise ValueError(f"topk mask: scores {s.dtype} {s.shape} do not match p0 {p0}, P {P}, g {g}")
    _ok(lib.svdq_topk_mask(_ptr(s, "float *"), n, H, H // g, T, p0, P, max(int(k), 0)), "topk mask")


def softmax_av(scores: np.ndarray, v: np.ndarray, vtype: int, p0: int, P: int, k: int) -> np.ndarray:
    """kernels.softmax_av in C: scores float32 (KV, n, g, T) C-contiguous (overwritten), v (T, KV, d)
    float16 or (T, KV, row bytes) uint8 Q8_0 / Q4_0 rows -> (n, H, d); with 0 < k < P each query's
    group keeps its k best tokens of [p0, p0 + P)."""
    KV, n, g, T = scores.shape
    d = v.shape[2] if vtype == 1 else row_cols(vtype, v.shape[2])
    if (scores.dtype != np.float32 or not scores.flags.c_contiguous or v.shape[:2] != (T, KV) or
            not v.flags.c_contiguous or v.dtype != (np.float16 if vtype == 1 else np.uint8) or
            (vtype != 1 and v.shape[2] != row_bytes(vtype, d))):
        raise ValueError(f"softmax_av: scores {scores.dtype} {scores.shape} and v {v.dtype} {v.shape} (type {vtype}) "
                         "do not match")
    out = np.empty((n, KV * g, d), np.float32)                                   # (n, H, d)
    _ok(lib.svdq_softmax_av(_ptr(scores, "float *"), _ptr(v.view(np.uint8), "unsigned char *"), int(vtype), n,
                            KV * g, KV, d, T, p0, P, max(int(k), 0), 1, _ptr(out, "float *")), "softmax_av")
    return out


def quantize_rows(x: np.ndarray, qtype: int) -> np.ndarray:
    """x float32 (n, k) -> uint8 (n, row bytes): GGML Q8_0 / Q4_0 blocks, gguf.quants.quantize's values."""
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] % 32:
        raise ValueError(f"quantize_rows: rows of {x.shape} are not whole blocks of 32")
    out = np.empty((x.shape[0], row_bytes(qtype, x.shape[1])), np.uint8)
    _ok(lib.svdq_quantize_rows(_ptr(x, "float *"), x.shape[0], x.shape[1], int(qtype), _ptr(out, "unsigned char *")),
        "quantize_rows")
    return out


def set_threads(n: int) -> None:
    lib.svdq_set_threads(int(n))


def set_path(name: str | None) -> None:
    """Force a SIMD path ('scalar', 'avx2', 'avx512', 'neon', 'neon_dot') or None for automatic."""
    _ok(lib.svdq_set_path(-1 if name is None else PATHS[name]), f"path {name}")


def cpu_paths() -> list[str]:
    return [n for n, i in PATHS.items() if lib.svdq_path_supported(i)]


def active_path() -> str:
    return {v: k for k, v in PATHS.items()}[lib.svdq_active_path()]


def qk_f16(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """q: float32 (n, H, d), k: float16 (T, KV, d) -> raw scores float32 (n, H, T)."""
    n, H, d = q.shape
    T, KV, dk = k.shape
    if dk != d or k.dtype != np.float16 or H % KV:
        raise ValueError(f"qk_f16: q {q.shape} and k {k.shape} {k.dtype} do not match")
    q = np.ascontiguousarray(q, np.float32)
    out = np.empty((n, H, T), np.float32)
    _ok(lib.svdq_qk_f16(_ptr(q, "float *"), _ptr(k.view(np.uint16), "unsigned short *"), n, H, KV, d, T,
                        _ptr(out, "float *")), "qk_f16")
    return out


def attend_f16(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One decode query's attention over every key, no mask: q float32 (1, H, d) (scaled), k, v
    float16 (T, KV, d) C-contiguous -> (1, H, d). One native call (scores, softmax and V per token
    chunk on each thread, then merged)."""
    _, H, d = q.shape
    T, KV, dk = k.shape
    if (q.shape[0] != 1 or dk != d or k.dtype != np.float16 or v.dtype != np.float16 or v.shape != k.shape or
            H % KV or not k.flags.c_contiguous or not v.flags.c_contiguous or T == 0):
        raise ValueError(f"attend_f16: q {q.shape} k {k.shape} {k.dtype} v {v.shape} {v.dtype} do not match")
    q = _f32c(q)
    scores = _buf("attend_scores", H * T)                                       # (H*T,) scratch
    out = np.empty((1, H, d), np.float32)                                      # (1, H, d)
    _ok(lib.svdq_attend_f16(_ptr(q, "float *"), _ptr(k.view(np.uint16), "unsigned short *"),
                            _ptr(v.view(np.uint16), "unsigned short *"), H, KV, d, T, _ptr(scores, "float *"),
                            _ptr(out, "float *")), "attend_f16")
    return out


class DenseDecoder:
    """A dense f16 cache's decode step in one native call (svdq_dense_decode): rope k, store k and v
    in row `row` of the cache arrays, attend rows lo..row. Pointers to the cache arrays and RoPE
    tables are made once per array object (the cache reallocates them only when it grows)."""

    def __init__(self):
        self._ptrs: dict = {}

    def _ptr(self, name: str, a: np.ndarray, ctype: str):
        return _held_ptr(self._ptrs, name, a, ctype)

    def __call__(self, kc: np.ndarray, vc: np.ndarray, row: int, lo: int, k: np.ndarray, v: np.ndarray,
                 q: np.ndarray, scale: float, cos: np.ndarray, sin: np.ndarray, pos: int, neox: bool) -> np.ndarray:
        """kc, vc: float16 (cap, KV, d); k, v: float32 (1, KV, d) pre-RoPE key, value; q: float32
        (1, H, d) -> (1, H, d)."""
        cap, KV, d = kc.shape
        H = q.shape[1]
        if (vc.shape != kc.shape or kc.dtype != np.float16 or vc.dtype != np.float16 or k.shape != (1, KV, d)
                or v.shape != (1, KV, d) or q.shape != (1, H, d) or not _tables_match(cos, sin, d)):
            raise ValueError(f"dense decode: q {q.shape} k {k.shape} v {v.shape} cache {kc.shape} do not match")
        k, v, q = _f32c(k), _f32c(v), _f32c(q)
        scores = _buf("attend_scores", H * (row - lo + 1))                          # (H*T,) scratch
        out = np.empty((1, H, d), np.float32)                                       # (1, H, d)
        _ok(lib.svdq_dense_decode(_ptr(q, "float *"), float(scale), _ptr(k, "float *"), _ptr(v, "float *"), H, KV, d,
                                  self._ptr("cos", cos, "float *"), self._ptr("sin", sin, "float *"), cos.shape[0],
                                  int(pos), int(bool(neox)), self._ptr("kc", kc, "unsigned short *"),
                                  self._ptr("vc", vc, "unsigned short *"), cap, int(row), int(lo),
                                  _ptr(scores, "float *"), _ptr(out, "float *")), "dense decode")
        return out


def softmax_av_f16(scores: np.ndarray, v: np.ndarray) -> np.ndarray:
    """scores: float32 (n, H, T) (-inf = masked; overwritten), v: float16 (T, KV, d) -> (n, H, d).
    V rows are read only where the softmax weight is nonzero."""
    n, H, T = scores.shape
    Tv, KV, d = v.shape
    if Tv != T or v.dtype != np.float16 or H % KV or not scores.flags.c_contiguous or scores.dtype != np.float32:
        raise ValueError(f"softmax_av_f16: scores {scores.shape} and v {v.shape} {v.dtype} do not match")
    out = np.empty((n, H, d), np.float32)
    _ok(lib.svdq_softmax_av_f16(_ptr(scores, "float *"), _ptr(v.view(np.uint16), "unsigned short *"), n, H, KV,
                                d, T, _ptr(out, "float *")), "softmax_av_f16")
    return out


def _f32c(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 and a.flags.c_contiguous else np.ascontiguousarray(a, np.float32)


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """ref.rmsnorm in C: x float32 (..., d), w (d,)."""
    d = x.shape[-1]
    if w.shape != (d,):
        raise ValueError(f"rmsnorm: x {x.shape} and w {w.shape} do not match")
    x, w = _f32c(x), _f32c(w)
    out = np.empty(x.shape, np.float32)
    _ok(lib.svdq_rmsnorm(_ptr(x, "float *"), _ptr(w, "float *"), x.size // d, d, float(eps), _ptr(out, "float *")),
        "rmsnorm")
    return out


ACT_IDS = {"silu": 0, "gelu_tanh": 1}


def act_mul(g: np.ndarray, u: np.ndarray, act: str) -> np.ndarray:
    """ref.act_mul in C."""
    if g.shape != u.shape:
        raise ValueError(f"act_mul: g {g.shape} and u {u.shape} differ")
    g, u = _f32c(g), _f32c(u)
    out = np.empty(g.shape, np.float32)
    _ok(lib.svdq_act_mul(_ptr(g, "float *"), _ptr(u, "float *"), g.size, ACT_IDS[act], _ptr(out, "float *")), "act_mul")
    return out


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, pos0: int, neox: bool) -> np.ndarray:
    """ref.rope in C: x float32 (n, heads, d); cos, sin float32 (n_ctx, d/2) C-contiguous."""
    n, heads, d = x.shape
    if not _tables_match(cos, sin, d):
        raise ValueError(f"rope: x {x.shape} and tables {cos.shape} do not match")
    x = _f32c(x)
    out = np.empty(x.shape, np.float32)
    _ok(lib.svdq_rope(_ptr(x, "float *"), n, heads, d, _ptr(cos, "float *"), _ptr(sin, "float *"), cos.shape[0],
                      int(pos0), int(bool(neox)), _ptr(out, "float *")), "rope")
    return out


class DecodeLayers:
    """One decode token through each layer's two halves around attention (svdq_layer_attn_in,
    svdq_layer_ffn): the layer descriptors, with pointers to the weights' blocks and the norm
    vectors, are filled once; the activations live in buffers allocated here once."""

    def __init__(self, args, layers):
        a = args
        E, H, KV, d, F = a.n_embd, a.n_head, a.n_kv, a.head_dim, a.n_ff
        self._keep: list = []                               # what the descriptors point into
        self.layers = []
        for lw in layers:
            L = ffi.new("svdq_layer *")
            L.n_embd, L.n_head, L.n_kv, L.head_dim, L.n_ff = E, H, KV, d, F
            L.eps, L.act = float(a.norm_eps), ACT_IDS[a.act]
            for name in ("attn_norm", "ffn_norm", "post_attn_norm", "post_ffn_norm", "q_norm", "k_norm",
                         "bq", "bk", "bv"):
                vec = getattr(lw, name)
                if vec is not None:
                    vec = np.ascontiguousarray(vec, np.float32)
                    self._keep.append(vec)
                    setattr(L, name, _ptr(vec, "float *"))
            for i, w in enumerate((lw.wq, lw.wk, lw.wv, lw.wo, lw.w_gate, lw.w_up, lw.w_down)):
                p = _ptr(w.data, "unsigned char *")
                self._keep.append(p)
                L.w[i], L.rows[i], L.row_bytes[i], L.types[i] = p, w.rows, w.data.shape[1], int(w.qtype)
            self.layers.append(L)
        self.q = np.empty((1, H, d), np.float32)            # (1, H, d) roped queries
        self.k = np.empty((1, KV, d), np.float32)           # (1, KV, d) pre-RoPE keys
        self.v = np.empty((1, KV, d), np.float32)           # (1, KV, d)
        self.h = np.empty(E, np.float32)                    # (E,) normed input
        self.scratch = np.empty(2 * E + 2 * F, np.float32)  # (2E + 2F,) ffn temporaries
        self._p = {n: _ptr(getattr(self, n), "float *") for n in ("q", "k", "v", "h", "scratch")}
        self._tables: dict = {}
        self._x, self._xp = None, None                      # the last x and its pointer

    def _x_ptr(self, x: np.ndarray):
        """x's pointer, checked once per array: a decode step passes the same x to every layer."""
        if x is not self._x:
            if x.dtype != np.float32 or x.shape != (1, self.h.shape[0]) or not x.flags.c_contiguous:
                raise ValueError(f"decode layer: x must be float32 (1, {self.h.shape[0]}), got {x.dtype} {x.shape}")
            self._x, self._xp = x, _ptr(x, "float *")
        return self._xp

    def attn_in(self, i: int, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, pos: int, neox: bool):
        """x float32 (1, E) C-contiguous -> (q, k, v) views of this object's buffers, valid until the
        next call: q (1, H, d) roped at pos, k and v (1, KV, d)."""
        xp = self._x_ptr(x)
        key = id(cos)
        hit = self._tables.get(key)
        if hit is None or hit[0] is not cos:
            if not _tables_match(cos, sin, self.q.shape[2]):
                raise ValueError("decode layer: RoPE tables do not match")
            hit = self._tables[key] = (cos, sin, _ptr(cos, "float *"), _ptr(sin, "float *"))
        p = self._p
        _ok(lib.svdq_layer_attn_in(self.layers[i], xp, hit[2], hit[3], cos.shape[0], int(pos),
                                   int(bool(neox)), p["h"], p["q"], p["k"], p["v"]), "decode layer")
        return self.q, self.k, self.v

    def ffn(self, i: int, o: np.ndarray, x: np.ndarray) -> None:
        """x (1, E) += the attention output o (1, H*d) through Wo, then the FFN block; in place."""
        xp = self._x_ptr(x)
        o = _f32c(o)
        if o.size != self.q.size:
            raise ValueError(f"decode layer: attention output has {o.size} values, expected {self.q.size}")
        _ok(lib.svdq_layer_ffn(self.layers[i], _ptr(o, "float *"), xp, self._p["scratch"]),
            "decode layer")
