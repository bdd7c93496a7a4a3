"""Numba CUDA kernels for `--device cuda` (oracles: ref.py for GGML blocks, svdq_ref.py for SVDq).

Status: these kernels have been run only under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1),
where tests/cuda_sim_cases.py checks each against the numpy oracle, and compiled to PTX with
numba-cuda + NVVM (tests/cuda_ptx_check.py). They have not yet run on a GPU, so nothing here
has been timed. On hardware, FMA contraction can change the last bits of a float result; the
simulator runs each operation in IEEE float32 and matches the oracles bit for bit where they say so.

Imported only through `kernels.cuda_backend()` (the one device-selection point). Model code never
imports this module.

Layouts (same bytes as the CPU path; see ref.py for the block formats):
  weights   uint8 (rows, row_bytes) GGML blocks, uploaded once; every kernel reads them in chunks
            of 32 elements (a Q8_0/Q5_0/Q4_0 block, a K-quant sub-block of 32, or 32 floats).
  activations float32 (n, width) row-major, n <= the runner's batch.
  f16 K/V   float16 (rows, n_kv, head_dim); the row of position p is
            p if p < fixed else fixed + (p - fixed) % cap (a ring after `fixed` leading rows).
  scores    float32 (QB, n_head, SCAP): entry [i, h, p - k_lo] for key position p.
  SVDq      codes per width uint8 (G, max_blocks, n_w, B*w/8), scale/min float16 (G, max_blocks, r),
            basis float32 (G, D, r), mean float32 (G, D); see svdq_ref for the bit packing.

Block shapes: reductions run over threadIdx.x with a shared-memory tree (blockDim.x a power of two).
The simulator runs each thread as a Python thread and is slow at syncthreads, so it uses smaller
blocks (LANES, ROWS, THREADS below); the kernels are the same code.
"""
from __future__ import annotations

import math

import numpy as np
from gguf import GGMLQuantizationType as _T
from numba import cuda
from numba.core import config as _nb_config

from . import svdq_ref

SIMULATOR = bool(_nb_config.ENABLE_CUDASIM)

# block shapes: matmul uses (LANES, ROWS) threads, lanes of one row share its chunks
LANES = 2 if SIMULATOR else 32
ROWS = 8 if SIMULATOR else 4
THREADS = 4 if SIMULATOR else 128      # 1-D kernels
TILE = 8                               # tokens per matmul block (prefill reuses each weight chunk 8x)
LANES_MAX, ROWS_MAX, THREADS_MAX = 32, 8, 256

# GGML type ids (plain ints so kernels compare constants)
F32, F16, BF16 = int(_T.F32), int(_T.F16), int(_T.BF16)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = int(_T.Q4_0), int(_T.Q4_1), int(_T.Q5_0), int(_T.Q5_1), int(_T.Q8_0)
Q4_K, Q5_K, Q6_K = int(_T.Q4_K), int(_T.Q5_K), int(_T.Q6_K)
SUPPORTED = (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)

ACT_SILU, ACT_GELU_TANH = 0, 1
# SVDq code range by width: [min, max] clipped to mean +- c*std of the block (inf: min/max)
CLIP_8, CLIP_4, CLIP_2, CLIP_1 = (float(svdq_ref.CLIP_SIGMAS[w]) for w in (8, 4, 2, 1))
MODE_STORE, MODE_BIAS, MODE_ADD = 0, 1, 2      # matmul output: =, = + bias, +=


# ----------------------------------------------------------------------------------------------
# device availability

def unavailable_reason() -> str | None:
    """None when kernels can run (a GPU, or the simulator); otherwise why not, in one line."""
    if SIMULATOR:
        return None
    try:
        ok = cuda.is_available()
    except Exception as e:  # driver library present but broken
        return f"the CUDA driver failed to initialize ({type(e).__name__}: {e})".splitlines()[0]
    return None if ok else "no CUDA GPU found (no NVIDIA driver or device visible to numba-cuda)"


def describe_gpu() -> str:
    """One line for `svdq-edge info`: the GPU and its memory, or why there is none."""
    if SIMULATOR:
        return "CUDA simulator (NUMBA_ENABLE_CUDASIM=1), no GPU"
    if unavailable_reason():
        return "no CUDA GPU"
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    free, total = cuda.current_context().get_memory_info()
    cc = ".".join(str(x) for x in dev.compute_capability)
    return f"{name} (compute {cc}), {total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"


# ----------------------------------------------------------------------------------------------
# device helpers: IEEE half/float from bytes, GGML chunk dequantization, block reductions

@cuda.jit(device=True)
def _h2f(lo, hi):
    """Two little-endian bytes of an IEEE half -> float32 (exact)."""
    h = np.int32(lo) | (np.int32(hi) << 8)
    e = (h >> 10) & 31
    m = h & 1023
    if e == 0:
        v = np.float32(math.ldexp(np.float32(m), -24))
    elif e == 31:
        v = np.float32(math.inf) if m == 0 else np.float32(math.nan)
    else:
        v = np.float32(math.ldexp(np.float32(m + 1024), int(e - 25)))
    if h & 0x8000:
        v = -v
    return v


@cuda.jit(device=True)
def _b2f(b0, b1, b2, b3):
    """Four little-endian bytes of an IEEE float32 -> float32 (exact; BF16 passes b0 = b1 = 0)."""
    e = ((np.int32(b3) & 127) << 1) | (np.int32(b2) >> 7)
    m = ((np.int32(b2) & 127) << 16) | (np.int32(b1) << 8) | np.int32(b0)
    if e == 0:
        v = np.float32(math.ldexp(np.float32(m), -149))
    elif e == 255:
        v = np.float32(math.inf) if m == 0 else np.float32(math.nan)
    else:
        v = np.float32(math.ldexp(np.float32(m | 0x800000), int(e - 150)))
    if np.int32(b3) & 128:
        v = -v
    return v


@cuda.jit(device=True)
def _scale_min_k4(w, r, o, s):
    """Six-bit scale and min of sub-block s (0..7) from the 12 bytes at w[r, o:o+12] (ggml get_scale_min_k4)."""
    if s < 4:
        sc = np.int32(w[r, o + s]) & 63
        mn = np.int32(w[r, o + s + 4]) & 63
    else:
        sc = (np.int32(w[r, o + s + 4]) & 15) | ((np.int32(w[r, o + s - 4]) >> 6) << 4)
        mn = (np.int32(w[r, o + s + 4]) >> 4) | ((np.int32(w[r, o + s]) >> 6) << 4)
    return sc, mn


@cuda.jit(device=True)
def _dq32(w, r, c, qtype, vals):
    """vals[0:32] = elements 32c .. 32c+31 of row r of W, dequantized as ref.dequantize does."""
    if qtype == F32:
        o = c * 128
        for j in range(32):
            vals[j] = _b2f(w[r, o + 4 * j], w[r, o + 4 * j + 1], w[r, o + 4 * j + 2], w[r, o + 4 * j + 3])
    elif qtype == F16:
        o = c * 64
        for j in range(32):
            vals[j] = _h2f(w[r, o + 2 * j], w[r, o + 2 * j + 1])
    elif qtype == BF16:
        o = c * 64
        for j in range(32):
            vals[j] = _b2f(0, 0, w[r, o + 2 * j], w[r, o + 2 * j + 1])
    elif qtype == Q4_0 or qtype == Q4_1:
        # d, (m), qs[16]: low nibbles are elements 0..15, high nibbles 16..31
        nb = 18 if qtype == Q4_0 else 20
        o = c * nb
        d = _h2f(w[r, o], w[r, o + 1])
        for j in range(16):
            q = np.int32(w[r, o + nb - 16 + j])
            if qtype == Q4_0:
                vals[j] = d * np.float32((q & 15) - 8)
                vals[j + 16] = d * np.float32((q >> 4) - 8)
            else:
                m = _h2f(w[r, o + 2], w[r, o + 3])
                vals[j] = d * np.float32(q & 15) + m
                vals[j + 16] = d * np.float32(q >> 4) + m
    elif qtype == Q5_0 or qtype == Q5_1:
        # d, (m), qh u32 (bit j = 5th bit of element j), qs[16]
        nb = 22 if qtype == Q5_0 else 24
        o = c * nb
        d = _h2f(w[r, o], w[r, o + 1])
        oh = o + nb - 20
        qh = (np.int64(w[r, oh]) | (np.int64(w[r, oh + 1]) << 8) | (np.int64(w[r, oh + 2]) << 16)
              | (np.int64(w[r, oh + 3]) << 24))
        for j in range(16):
            q = np.int32(w[r, o + nb - 16 + j])
            lo = (q & 15) | np.int32(((qh >> j) & 1) << 4)
            hi = (q >> 4) | np.int32(((qh >> (j + 16)) & 1) << 4)
            if qtype == Q5_0:
                vals[j] = d * np.float32(lo - 16)
                vals[j + 16] = d * np.float32(hi - 16)
            else:
                m = _h2f(w[r, o + 2], w[r, o + 3])
                vals[j] = d * np.float32(lo) + m
                vals[j + 16] = d * np.float32(hi) + m
    elif qtype == Q8_0:
        o = c * 34
        d = _h2f(w[r, o], w[r, o + 1])
        for j in range(32):
            q = np.int32(w[r, o + 2 + j])
            if q > 127:
                q -= 256
            vals[j] = d * np.float32(q)
    elif qtype == Q4_K or qtype == Q5_K:
        # 8 sub-blocks of 32: x = (d*sc)*q - dmin*m; sub-blocks 2i, 2i+1 = low/high nibbles of qs[32i:32i+32]
        nb = 144 if qtype == Q4_K else 176
        s = c & 7
        o = (c >> 3) * nb
        d = _h2f(w[r, o], w[r, o + 1])
        dmin = _h2f(w[r, o + 2], w[r, o + 3])
        sc, mn = _scale_min_k4(w, r, o + 4, s)
        dd = d * np.float32(sc)
        dm = dmin * np.float32(mn)
        qb = o + nb - 128 + 32 * (s >> 1)
        sh = 4 * (s & 1)
        for j in range(32):
            q = (np.int32(w[r, qb + j]) >> sh) & 15
            if qtype == Q5_K:
                q |= ((np.int32(w[r, o + 16 + j]) >> s) & 1) << 4
            vals[j] = dd * np.float32(q) - dm
    elif qtype == Q6_K:
        # ql[128], qh[64], int8 scales[16], d; chunk cc = half h (0..1) x quarter k (0..3)
        cc = c & 7
        o = (c >> 3) * 210
        h = cc >> 2
        k = cc & 3
        d = _h2f(w[r, o + 208], w[r, o + 209])
        for j in range(32):
            ql = np.int32(w[r, o + 64 * h + 32 * (k & 1) + j])
            lo = (ql >> 4) if k >= 2 else (ql & 15)
            hi = (np.int32(w[r, o + 128 + 32 * h + j]) >> (2 * k)) & 3
            sc = np.int32(w[r, o + 192 + 2 * cc + (j >> 4)])
            if sc > 127:
                sc -= 256
            vals[j] = (d * np.float32(sc)) * np.float32((lo | (hi << 4)) - 32)


@cuda.jit(device=True)
def _block_sum(sh, v):
    """Sum of v over threadIdx.x (blockDim.x a power of two); sh: shared float32 (THREADS_MAX,)."""
    t = cuda.threadIdx.x
    sh[t] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            sh[t] += sh[t + s]
        cuda.syncthreads()
        s //= 2
    r = sh[0]
    cuda.syncthreads()
    return r


@cuda.jit(device=True)
def _block_max(sh, v):
    t = cuda.threadIdx.x
    sh[t] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            sh[t] = max(sh[t], sh[t + s])
        cuda.syncthreads()
        s //= 2
    r = sh[0]
    cuda.syncthreads()
    return r


@cuda.jit(device=True)
def _ring_row(p, fixed, cap):
    """Row of key/value position p: the first `fixed` positions have their own rows, the rest a ring of cap."""
    return p if p < fixed else fixed + (p - fixed) % cap


# ----------------------------------------------------------------------------------------------
# kernels: weights

@cuda.jit
def get_rows_k(w, qtype, ids, tok, n, cols, scale, out):
    """out[i, :] = scale * dequantized row (tok if tok >= 0 else ids[i]) of W, i < n.
    w: uint8 (vocab, row_bytes); ids: int32 (>= n,); out: float32 (>= n, cols).
    grid: n blocks of threads over 32-element chunks."""
    i = cuda.blockIdx.x
    vals = cuda.local.array(32, np.float32)
    r = tok if tok >= 0 else ids[i]
    for c in range(cuda.threadIdx.x, cols // 32, cuda.blockDim.x):
        _dq32(w, r, c, qtype, vals)
        for j in range(32):
            out[i, c * 32 + j] = vals[j] * scale


@cuda.jit
def matmul_k(w, qtype, rows, cols, x, x0, n, bias, mode, out, o0):
    """out[o0+t, r] (=, = +bias[r], +=) sum_k W[r, k] * x[x0+t, k] for r < rows, t < n.
    w: uint8 (rows, row_bytes) GGML blocks; x: float32 (*, cols); out: float32 (*, rows);
    bias: float32 (rows,) read in MODE_BIAS only.
    Block (LANES, ROWS): row slot y = threadIdx.y, lane l sums chunks l, l+LANES, ... for TILE
    tokens, then a shared-memory tree over lanes. grid: (ceil(rows/ROWS), ceil(n/TILE))."""
    lane = cuda.threadIdx.x
    y = cuda.threadIdx.y
    r = cuda.blockIdx.x * cuda.blockDim.y + y
    t0 = cuda.blockIdx.y * TILE
    nt = min(TILE, n - t0)
    vals = cuda.local.array(32, np.float32)
    acc = cuda.local.array(TILE, np.float32)
    sh = cuda.shared.array((ROWS_MAX, TILE, LANES_MAX), np.float32)
    for t in range(TILE):
        acc[t] = 0.0
    if r < rows:
        for c in range(lane, cols // 32, cuda.blockDim.x):
            _dq32(w, r, c, qtype, vals)
            for t in range(nt):
                xr = x0 + t0 + t
                s = np.float32(0.0)
                for j in range(32):
                    s += vals[j] * x[xr, c * 32 + j]
                acc[t] += s
    for t in range(nt):
        sh[y, t, lane] = acc[t]
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if lane < s:
            for t in range(nt):
                sh[y, t, lane] += sh[y, t, lane + s]
        cuda.syncthreads()
        s //= 2
    if r < rows:
        for t in range(lane, nt, cuda.blockDim.x):
            v = sh[y, t, 0]
            o = o0 + t0 + t
            if mode == MODE_BIAS:
                v += bias[r]
            if mode == MODE_ADD:
                out[o, r] += v
            else:
                out[o, r] = v


# ----------------------------------------------------------------------------------------------
# kernels: small float ops

@cuda.jit
def rmsnorm_k(x, i0, w, d, eps, add, out):
    """For rows i0.. (one block per d-segment of a row): y = x / rms(x) * w over each segment of d
    values; out = y, or out += y when add. x, out: float32 (*, C), C a multiple of d; w: float32 (d,).
    grid: (n_rows * C/d) blocks."""
    per = x.shape[1] // d
    i = i0 + cuda.blockIdx.x // per
    o = (cuda.blockIdx.x % per) * d
    sh = cuda.shared.array(THREADS_MAX, np.float32)
    ss = np.float32(0.0)
    for e in range(cuda.threadIdx.x, d, cuda.blockDim.x):
        v = x[i, o + e]
        ss += v * v
    tot = _block_sum(sh, ss)
    inv = np.float32(1.0) / math.sqrt(tot / np.float32(d) + eps)
    for e in range(cuda.threadIdx.x, d, cuda.blockDim.x):
        yv = (x[i, o + e] * inv) * w[e]
        if add:
            out[i, o + e] += yv
        else:
            out[i, o + e] = yv


@cuda.jit
def rope_k(x, n, n_heads, hd, cos, sin, pos0, neox):
    """Rotate x: float32 (*, n_heads*hd) rows 0..n-1 in place at positions pos0+i.
    cos, sin: float32 (n_ctx, hd/2). neox rotates halves (x[k], x[k+hd/2]), else pairs (x[2k], x[2k+1]).
    One thread per (row, head, pair)."""
    half = hd // 2
    idx = cuda.grid(1)
    if idx >= n * n_heads * half:
        return
    k = idx % half
    h = (idx // half) % n_heads
    i = idx // (half * n_heads)
    c = cos[pos0 + i, k]
    s = sin[pos0 + i, k]
    if neox:
        ia = h * hd + k
        ib = ia + half
    else:
        ia = h * hd + 2 * k
        ib = ia + 1
    a = x[i, ia]
    b = x[i, ib]
    x[i, ia] = a * c - b * s
    x[i, ib] = a * s + b * c


@cuda.jit
def act_mul_k(g, u, n, act):
    """g[i, :] = act(g[i, :]) * u[i, :] for rows < n; act 0 = SiLU, 1 = GELU-tanh. g, u: float32 (*, F)."""
    idx = cuda.grid(1)
    F = g.shape[1]
    if idx >= n * F:
        return
    i = idx // F
    j = idx % F
    v = g[i, j]
    if act == ACT_GELU_TANH:
        a = np.float32(0.5) * v * (np.float32(1.0) + math.tanh(
            np.float32(0.7978845608028654) * (v + np.float32(0.044715) * v * v * v)))
    else:
        a = v / (np.float32(1.0) + math.exp(-v))
    g[i, j] = a * u[i, j]


@cuda.jit
def store_f16_k(src, n, pos0, fixed, cap, dst):
    """dst[row(pos0+i), :, :] = float16(src[i, :]) for i < n (rows by _ring_row).
    src: float32 (*, KV*d); dst: float16 (rows, KV, d). One thread per element."""
    KV = dst.shape[1]
    d = dst.shape[2]
    idx = cuda.grid(1)
    if idx >= n * KV * d:
        return
    i = idx // (KV * d)
    e = idx % (KV * d)
    row = _ring_row(pos0 + i, fixed, cap)
    dst[row, e // d, e % d] = src[i, e]


# ----------------------------------------------------------------------------------------------
# kernels: attention (scores, softmax, V accumulation); query rows are batch rows i0 + ii

@cuda.jit
def qk_f16_k(q, i0, H, grp, qpos0, k_lo, window, skip_lo, skip_hi, kc, fixed, cap, s):
    """s[ii, h, p - k_lo] = q[i0+ii, h] . K[p] for key positions p visible to query position
    qp = qpos0 + i0 + ii (k_lo <= p <= qp, p > qp - window when window > 0), except
    skip_lo <= p < skip_hi (packed tokens, scored by svdq_score_k).
    q: float32 (*, H*d); kc: float16 (rows, KV, d), head h reads KV head h // grp.
    grid: (ceil(span/threads), nq*H), one thread per key."""
    d = kc.shape[2]
    ii = cuda.blockIdx.y // H
    h = cuda.blockIdx.y % H
    p = k_lo + cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    qp = qpos0 + i0 + ii
    lo = k_lo
    if window > 0:
        lo = max(lo, qp - window + 1)
    if p < lo or p > qp or (p >= skip_lo and p < skip_hi):
        return
    row = _ring_row(p, fixed, cap)
    kv = h // grp
    acc = np.float32(0.0)
    for e in range(d):
        acc += q[i0 + ii, h * d + e] * np.float32(kc[row, kv, e])
    s[ii, h, p - k_lo] = acc


@cuda.jit
def softmax_k(s, H, qpos0, i0, k_lo, window, scale):
    """In place over each row (ii, h) of s: visible entries (as qk_f16_k) -> softmax(scale * s).
    s: float32 (QB, H, SCAP). grid: nq*H blocks."""
    ii = cuda.blockIdx.x // H
    h = cuda.blockIdx.x % H
    qp = qpos0 + i0 + ii
    lo = k_lo
    if window > 0:
        lo = max(lo, qp - window + 1)
    sh = cuda.shared.array(THREADS_MAX, np.float32)
    m = -np.float32(math.inf)
    for p in range(lo + cuda.threadIdx.x, qp + 1, cuda.blockDim.x):
        m = max(m, s[ii, h, p - k_lo] * scale)
    m = _block_max(sh, m)
    tot = np.float32(0.0)
    for p in range(lo + cuda.threadIdx.x, qp + 1, cuda.blockDim.x):
        e = math.exp(s[ii, h, p - k_lo] * scale - m)
        s[ii, h, p - k_lo] = e
        tot += e
    tot = _block_sum(sh, tot)
    inv = np.float32(1.0) / tot
    for p in range(lo + cuda.threadIdx.x, qp + 1, cuda.blockDim.x):
        s[ii, h, p - k_lo] *= inv


@cuda.jit
def av_f16_k(s, H, grp, qpos0, i0, k_lo, window, vc, fixed, cap, out):
    """out[i0+ii, h*d+e] = sum_p s[ii, h, p - k_lo] * V[p, h // grp, e] over visible p.
    vc: float16 (rows, KV, d); out: float32 (*, H*d). grid: nq*H blocks, threads over e."""
    d = vc.shape[2]
    ii = cuda.blockIdx.x // H
    h = cuda.blockIdx.x % H
    kv = h // grp
    qp = qpos0 + i0 + ii
    lo = k_lo
    if window > 0:
        lo = max(lo, qp - window + 1)
    for e in range(cuda.threadIdx.x, d, cuda.blockDim.x):
        acc = np.float32(0.0)
        for p in range(lo, qp + 1):
            acc += s[ii, h, p - k_lo] * np.float32(vc[_ring_row(p, fixed, cap), kv, e])
        out[i0 + ii, h * d + e] = acc


# ----------------------------------------------------------------------------------------------
# kernels: SVDq (post-RoPE basis; group g = KV head for a per-head basis, 0 for a per-layer one)

@cuda.jit
def svdq_project_k(kc, fixed, cap, p0, V, mu, z):
    """Latent coordinates of the keys at positions p0 + f*B + t:
    z[f, g, t, j] = sum_e (K[p, g + e//d, e%d] - mu[g, e]) * V[g, e, j]  (e < D; D = d per head,
    KV*d per layer). kc: float16 (rows, KV, d); V: float32 (G, D, r); mu: float32 (G, D);
    z: float32 (nf, G, B, r). grid: nf*G*B blocks (one token of one group), threads over j."""
    d = kc.shape[2]
    G = z.shape[1]
    B = z.shape[2]
    r = z.shape[3]
    D = V.shape[1]
    blk = cuda.blockIdx.x
    t = blk % B
    g = (blk // B) % G
    f = blk // (B * G)
    row = _ring_row(p0 + f * B + t, fixed, cap)
    for j in range(cuda.threadIdx.x, r, cuda.blockDim.x):
        acc = np.float32(0.0)
        for e in range(D):
            acc += (np.float32(kc[row, g + e // d, e % d]) - mu[g, e]) * V[g, e, j]
        z[f, g, t, j] = acc


@cuda.jit
def svdq_pack_k(z, n8, n4, n2, n1, blk0, c8, c4, c2, c1, scale, mn):
    """Quantize and pack latent blocks exactly as svdq_ref.quantize_block: per channel j, the range
    [min, max] over the B tokens (clipped to mean +- c*std at 1 and 2 bits), min and scale rounded
    to f16, codes = clip(rint((z - min) / scale)), packed
    LSB-first (token t at byte t*w//8). z: float32 (nf, G, B, r); codes written to block blk0 + f:
    c8 (G, cap, n8, B), c4 (G, cap, n4, B/2), c2 (G, cap, n2, B/4), c1 (G, cap, n1, B/8) uint8;
    scale, mn: float16 (G, cap, r). grid: nf*G blocks, one thread per channel."""
    G = z.shape[1]
    B = z.shape[2]
    r = z.shape[3]
    f = cuda.blockIdx.x // G
    g = cuda.blockIdx.x % G
    b = blk0 + f
    for j in range(cuda.threadIdx.x, r, cuda.blockDim.x):
        if j < n8:
            w = 8
            k = j
        elif j < n8 + n4:
            w = 4
            k = j - n8
        elif j < n8 + n4 + n2:
            w = 2
            k = j - n8 - n4
        else:
            w = 1
            k = j - n8 - n4 - n2
        lo = z[f, g, 0, j]
        hi = lo
        tot = np.float32(0.0)
        for t in range(B):
            v = z[f, g, t, j]
            lo = min(lo, v)
            hi = max(hi, v)
            tot += v
        cw = CLIP_8 if w == 8 else (CLIP_4 if w == 4 else (CLIP_2 if w == 2 else CLIP_1))
        if cw < math.inf:
            # clipped range (svdq_ref.CLIP_SIGMAS): float32 sums in token order, as numpy's axis-0 mean/std
            m = tot / np.float32(B)
            ss = np.float32(0.0)
            for t in range(B):
                dv = z[f, g, t, j] - m
                ss += dv * dv
            cs = np.float32(cw)
            sd = np.float32(math.sqrt(ss / np.float32(B)))
            lo = max(lo, m - cs * sd)
            hi = min(hi, m + cs * sd)
        # the stored f16 values are the ones used for coding (written, then read back)
        mn[g, b, j] = lo
        lo32 = np.float32(mn[g, b, j])
        levels = np.float32((1 << w) - 1)
        scale[g, b, j] = (hi - lo32) / levels
        s32 = np.float32(scale[g, b, j])
        inv = np.float32(1.0) / s32 if s32 > 0 else np.float32(0.0)
        per = 8 // w
        for qb in range(B * w // 8):
            byte = 0
            for u in range(per):
                c = round((z[f, g, qb * per + u, j] - lo32) * inv)
                c = min(max(c, 0), (1 << w) - 1)
                byte |= c << (w * u)
            if w == 8:
                c8[g, b, k, qb] = byte
            elif w == 4:
                c4[g, b, k, qb] = byte
            elif w == 2:
                c2[g, b, k, qb] = byte
            else:
                c1[g, b, k, qb] = byte


@cuda.jit
def svdq_qproj_k(q, i0, H, grp, per_head, V, mu, qt, base):
    """Project each query head onto its group's basis: qt[ii, h, j] = q_h . V[g, o:o+d, j] and
    base[ii, h] = q_h . mu[g, o:o+d], where o = 0 (per-head basis, g = h // grp) or
    (h // grp) * d (per-layer basis, g = 0). q: float32 (*, H*d); qt: float32 (QB, H, r);
    base: float32 (QB, H). grid: nq*H blocks, threads over j."""
    r = V.shape[2]
    d = q.shape[1] // H
    ii = cuda.blockIdx.x // H
    h = cuda.blockIdx.x % H
    g = h // grp if per_head else 0
    o = 0 if per_head else (h // grp) * d
    for j in range(cuda.threadIdx.x, r, cuda.blockDim.x):
        acc = np.float32(0.0)
        for e in range(d):
            acc += q[i0 + ii, h * d + e] * V[g, o + e, j]
        qt[ii, h, j] = acc
    if cuda.threadIdx.x == 0:
        acc = np.float32(0.0)
        for e in range(d):
            acc += q[i0 + ii, h * d + e] * mu[g, o + e]
        base[ii, h] = acc


@cuda.jit
def svdq_score_k(qt, base, H, grp, per_head, nblk, S, n8, n4, n2, n1, c8, c4, c2, c1, scale, mn, s):
    """Scores of packed tokens straight from their codes (no K rebuilt):
    s[ii, h, S + b*B + t] = base[ii, h] + sum_j qt[ii, h, j] * (scale[g,b,j] * code_j(t) + mn[g,b,j]).
    Arrays as in svdq_pack_k / svdq_qproj_k; B = c8.shape[3]. grid: (ceil(nblk*B/threads), nq*H)."""
    B = c1.shape[3] * 8
    ii = cuda.blockIdx.y // H
    h = cuda.blockIdx.y % H
    u = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if u >= nblk * B:
        return
    g = h // grp if per_head else 0
    b = u // B
    t = u % B
    acc = base[ii, h]
    j = 0
    for k in range(n8):
        code = np.int32(c8[g, b, k, t])
        acc += qt[ii, h, j] * (np.float32(scale[g, b, j]) * np.float32(code) + np.float32(mn[g, b, j]))
        j += 1
    for k in range(n4):
        code = (np.int32(c4[g, b, k, t >> 1]) >> (4 * (t & 1))) & 15
        acc += qt[ii, h, j] * (np.float32(scale[g, b, j]) * np.float32(code) + np.float32(mn[g, b, j]))
        j += 1
    for k in range(n2):
        code = (np.int32(c2[g, b, k, t >> 2]) >> (2 * (t & 3))) & 3
        acc += qt[ii, h, j] * (np.float32(scale[g, b, j]) * np.float32(code) + np.float32(mn[g, b, j]))
        j += 1
    for k in range(n1):
        code = (np.int32(c1[g, b, k, t >> 3]) >> (t & 7)) & 1
        acc += qt[ii, h, j] * (np.float32(scale[g, b, j]) * np.float32(code) + np.float32(mn[g, b, j]))
        j += 1
    s[ii, h, S + u] = acc


# ----------------------------------------------------------------------------------------------
# host launchers: validate sizes (kernels do no bounds checks), pick block shapes, launch

def _pow2(n: int, cap: int) -> int:
    """Smallest power of two >= n, at most cap."""
    p = 1
    while p < n and p < cap:
        p *= 2
    return p


def _grid1(total: int, threads: int) -> int:
    return max(1, (total + threads - 1) // threads)


def check_weight(name: str, qtype: int, rows: int, cols: int) -> None:
    """Raise ValueError (with the numbers) for a weight these kernels cannot read."""
    if qtype not in SUPPORTED:
        from ..quants import type_name
        raise ValueError(f"{name}: type {type_name(qtype)} has no CUDA kernel "
                         f"(supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K)")
    if cols % 32:
        raise ValueError(f"{name}: {cols} columns is not a multiple of 32 (the CUDA chunk)")


def matmul(w, qtype: int, rows: int, cols: int, x, n: int, out, *, x0: int = 0, o0: int = 0,
           bias=None, add: bool = False) -> None:
    """out[o0:o0+n, :rows] (=, +=) x[x0:x0+n, :cols] @ W.T (+ bias). Device arrays, see matmul_k."""
    if x.shape[1] != cols or out.shape[1] != rows or x0 + n > x.shape[0] or o0 + n > out.shape[0]:
        raise ValueError(f"matmul: W ({rows}, {cols}), x {x.shape} rows {x0}+{n}, out {out.shape} rows {o0}+{n}")
    if w.shape[0] != rows:
        raise ValueError(f"matmul: weight data has {w.shape[0]} rows, expected {rows}")
    mode = MODE_ADD if add else (MODE_BIAS if bias is not None else MODE_STORE)
    lanes = _pow2(cols // 32, LANES)
    grid = ((rows + ROWS - 1) // ROWS, (n + TILE - 1) // TILE)
    matmul_k[grid, (lanes, ROWS)](w, qtype, rows, cols, x, x0, n, bias if bias is not None else x[0], mode, out, o0)


def get_rows(w, qtype: int, cols: int, ids, n: int, out, scale: float = 1.0, tok: int = -1) -> None:
    """out[:n] = scale * rows ids[:n] (or the one row tok) of W, dequantized."""
    if out.shape[1] != cols or n > out.shape[0] or (tok < 0 and n > ids.shape[0]):
        raise ValueError(f"get_rows: out {out.shape}, cols {cols}, n {n}")
    get_rows_k[n, _pow2(cols // 32, THREADS)](w, qtype, ids, tok, n, cols, np.float32(scale), out)


def rmsnorm(x, w, eps: float, out, *, i0: int = 0, n: int = 1, add: bool = False) -> None:
    """Rows i0..i0+n-1: out (=, +=) x / rms(x) * w, per segment of len(w) values."""
    d = w.shape[0]
    if x.shape[1] % d or out.shape != x.shape or i0 + n > x.shape[0]:
        raise ValueError(f"rmsnorm: x {x.shape}, w ({d},), out {out.shape}, rows {i0}+{n}")
    rmsnorm_k[n * (x.shape[1] // d), _pow2(d, THREADS)](x, i0, w, d, np.float32(eps), add, out)


def rope(x, n: int, n_heads: int, hd: int, cos, sin, pos0: int, neox: bool) -> None:
    if x.shape[1] != n_heads * hd or pos0 + n > cos.shape[0] or cos.shape[1] != hd // 2:
        raise ValueError(f"rope: x {x.shape}, {n_heads}x{hd}, positions {pos0}+{n}, table {cos.shape}")
    total = n * n_heads * (hd // 2)
    rope_k[_grid1(total, THREADS), THREADS](x, n, n_heads, hd, cos, sin, pos0, neox)


def act_mul(g, u, n: int, act: int) -> None:
    total = n * g.shape[1]
    act_mul_k[_grid1(total, THREADS), THREADS](g, u, n, act)


def store_f16(src, n: int, pos0: int, fixed: int, cap: int, dst) -> None:
    """dst rows of positions pos0..pos0+n-1 = float16(src[:n])."""
    KV, d = dst.shape[1], dst.shape[2]
    if src.shape[1] != KV * d or fixed + min(cap, max(0, pos0 + n - fixed)) > dst.shape[0]:
        raise ValueError(f"store_f16: src {src.shape}, dst {dst.shape}, fixed {fixed}, cap {cap}")
    store_f16_k[_grid1(n * KV * d, THREADS), THREADS](src, n, pos0, fixed, cap, dst)


def attention_scores_f16(q, i0: int, nq: int, H: int, qpos0: int, k_lo: int, window: int, kc,
                         fixed: int, cap: int, s, skip=(0, 0)) -> None:
    """Scores of f16 keys for query rows i0..i0+nq-1 into s[:nq] (see qk_f16_k)."""
    KV, d = kc.shape[1], kc.shape[2]
    span = qpos0 + i0 + nq - k_lo
    if q.shape[1] != H * d or H % KV or nq > s.shape[0] or s.shape[1] != H or span > s.shape[2]:
        raise ValueError(f"attention_scores_f16: q {q.shape}, H {H}, k {kc.shape}, s {s.shape}, span {span}")
    qk_f16_k[(_grid1(span, THREADS), nq * H), THREADS](q, i0, H, H // KV, qpos0, k_lo, window, skip[0], skip[1],
                                                      kc, fixed, cap, s)


def softmax(s, nq: int, H: int, qpos0: int, i0: int, k_lo: int, window: int, scale: float) -> None:
    softmax_k[nq * H, THREADS](s, H, qpos0, i0, k_lo, window, np.float32(scale))


def attend_v_f16(s, nq: int, H: int, qpos0: int, i0: int, k_lo: int, window: int, vc, fixed: int,
                 cap: int, out) -> None:
    KV, d = vc.shape[1], vc.shape[2]
    if out.shape[1] != H * d or H % KV:
        raise ValueError(f"attend_v_f16: out {out.shape}, H {H}, v {vc.shape}")
    av_f16_k[nq * H, _pow2(d, THREADS)](s, H, H // KV, qpos0, i0, k_lo, window, vc, fixed, cap, out)


def svdq_project(kc, fixed: int, cap: int, p0: int, nf: int, V, mu, z) -> None:
    G, B, r = z.shape[1], z.shape[2], z.shape[3]
    if nf > z.shape[0] or V.shape[0] != G or V.shape[2] != r or mu.shape != V.shape[:2]:
        raise ValueError(f"svdq_project: z {z.shape}, nf {nf}, V {V.shape}, mu {mu.shape}")
    svdq_project_k[nf * G * B, _pow2(r, THREADS)](kc, fixed, cap, p0, V, mu, z)


def svdq_pack(z, nf: int, counts, blk0: int, codes, scale, mn) -> None:
    G, B, r = z.shape[1], z.shape[2], z.shape[3]
    if sum(counts) != r or blk0 + nf > scale.shape[1] or B % 8:
        raise ValueError(f"svdq_pack: z {z.shape}, counts {counts}, blocks {blk0}+{nf}, scale {scale.shape}")
    svdq_pack_k[nf * G, _pow2(r, THREADS)](z, *counts, blk0, *codes, scale, mn)


def svdq_qproj(q, i0: int, nq: int, H: int, grp: int, per_head: bool, V, mu, qt, base) -> None:
    svdq_qproj_k[nq * H, _pow2(V.shape[2], THREADS)](q, i0, H, grp, per_head, V, mu, qt, base)


def svdq_scores(qt, base, nq: int, H: int, grp: int, per_head: bool, nblk: int, S: int, counts, codes,
                scale, mn, s) -> None:
    B = codes[3].shape[3] * 8
    if S + nblk * B > s.shape[2] or nblk > scale.shape[1]:
        raise ValueError(f"svdq_scores: {nblk} blocks of {B} after {S} sinks, s {s.shape}")
    svdq_score_k[(_grid1(nblk * B, THREADS), nq * H), THREADS](qt, base, H, grp, per_head, nblk, S, *counts,
                                                              *codes, scale, mn, s)


def alloc_codes(G: int, nblk: int, counts, B: int) -> list:
    """Device code arrays per width (8, 4, 2, 1): uint8 (G, nblk, max(n_w, 1), B*w/8)."""
    return [cuda.device_array((G, nblk, max(n, 1), B * w // 8), np.uint8) for w, n in zip((8, 4, 2, 1), counts)]
