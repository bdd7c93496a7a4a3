"""Every SIMD path of the native kernels through one C driver (native/test_driver.c), compared with
the numpy oracles: the NEON paths cross-compiled for aarch64 and run under qemu-aarch64 (CPU `max`,
which has dotprod, and `cortex-a53`, which does not: the same binary must pick plain NEON there),
the x86 paths natively. Skipped when the cross compiler or qemu is missing (.ci/apt-packages.txt).

Tolerances: integer dots are checked bit-exact, on inputs chosen so that every float operation
around them is exact too (power-of-two block scales, activations whose 8-bit quantization is exact);
f16 conversions bit-exact; float reductions (random matmul, q.k, softmax.V, latent scores) within
1e-5 of the size of the terms summed, since paths differ only in float summation order.
On x86 the random matmul, dequantization and latent-score cases run through cffi in
tests/test_quants.py already, so the driver runs only the cases that file does not cover."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from test_quants import FLOATS, QTYPES, random_blocks

from svdq_edge.kernels import ref, svdq_ref
from svdq_edge.quants import LAYOUTS, row_bytes
from svdq_edge.rope import RoPE

NATIVE = Path(__file__).resolve().parent.parent / "native"
CFLAGS = ["-O3", "-std=gnu11", "-fno-math-errno", "-fopenmp", "-I", str(NATIVE)]
OP = {"matmul": 1, "dequant": 2, "get_rows": 3, "latent": 4, "qk": 5, "softmax_av": 6, "latent_attend": 7,
      "softmax_av_rows": 8, "attend": 9}
SCALAR, AVX2, AVX512, NEON, NEON_DOT, AUTO = 0, 1, 2, 3, 4, -1
CROSS_GCC = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
IS_X86 = platform.machine() in ("x86_64", "AMD64")

# target -> (compiler, how to run the binary, paths it must report, path 'auto' must pick)
TARGETS = {
    "x86": ("gcc", [], None, None),
    "aarch64-max": (CROSS_GCC, [QEMU, "-cpu", "max"], {SCALAR, NEON, NEON_DOT}, NEON_DOT),
    "aarch64-a53": (CROSS_GCC, [QEMU, "-cpu", "cortex-a53"], {SCALAR, NEON}, NEON),
}
GROUPS = ["matmul_exact", "matmul_random", "dequant", "latent", "attention", "errors"]
X86_VIA_CFFI = {"matmul_random", "dequant", "latent"}      # covered per path by test_quants.py


def _skip_reason(target: str) -> str | None:
    if target == "x86":
        return None if IS_X86 and shutil.which("gcc") else "not an x86-64 machine with gcc"
    if not CROSS_GCC:
        return "aarch64-linux-gnu-gcc not found (apt-get install gcc-aarch64-linux-gnu; see .ci/apt-packages.txt)"
    if not QEMU:
        return "qemu-aarch64(-static) not found (apt-get install qemu-user-static; see .ci/apt-packages.txt)"
    return None


# -- cases -------------------------------------------------------------------------------------

@dataclass
class Case:
    group: str
    name: str
    op: str
    params: list            # up to 16 int64 parameters, as native/test_driver.c reads them
    bufs: list              # numpy arrays passed as raw bytes
    check: Callable         # check(rc, out float32 array) raises AssertionError


def _expect_equal(want: np.ndarray):
    want = np.ascontiguousarray(want, np.float32).ravel()

    def check(rc, out):
        assert rc == 0, f"rc {rc}"
        bad = np.flatnonzero(out.view(np.uint32) != want.view(np.uint32))
        assert bad.size == 0, f"{bad.size} of {want.size} differ, first at {bad[0]}: {out[bad[0]]!r} != {want[bad[0]]!r}"
    return check


def _expect_close(want: np.ndarray, size: np.ndarray, tol: float = 1e-5):
    """|out - want| <= tol * size elementwise (size: the sum of |terms| behind each output)."""
    want = np.asarray(want, np.float64)
    size = np.broadcast_to(np.asarray(size, np.float64), want.shape).ravel()
    want = want.ravel()

    def check(rc, out):
        assert rc == 0, f"rc {rc}"
        err = np.abs(out.astype(np.float64) - want) / np.maximum(size, 1e-30)
        assert np.all(np.isfinite(out)) and err.max() <= tol, f"max relative error {err.max():.3g} at {err.argmax()}"
    return check


def _expect_error(code: int):
    def check(rc, out):
        assert rc == code, f"rc {rc}, expected {code}"
        assert np.all(np.isnan(out)), "a refused call wrote its output"
    return check


# power-of-two f16 block scales (d = 2^-6, dmin = 2^-5) make every product in the dot exact
F16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
              T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
POW2_BITS = (0x2400, 0x2800)


def exact_blocks(qtype, rows, cols, rng):
    data = rng.integers(0, 256, size=(rows, row_bytes(qtype, cols)), dtype=np.uint8)
    b = data.reshape(-1, LAYOUTS[qtype][1])
    for o, bits in zip(F16_FIELDS[qtype], POW2_BITS):
        b[:, o], b[:, o + 1] = bits & 0xFF, bits >> 8
    # AVX2 adds Q6_K's offset as -32 * scale * (code sums) apart from the dot: small int8 scales
    # keep those partial sums below 2^24 grid steps, so they stay exact too
    if qtype == T.Q6_K:
        b[:, 192:208] = rng.integers(-8, 9, size=(b.shape[0], 16)).astype(np.int8).view(np.uint8)
    return data


def exact_activations(n, k, rng):
    """Integers in [-127, 127] with |max| = 127 in each 32-block (8-bit scale exactly 1), and one
    all-zero block (scale 0)."""
    x = rng.integers(-127, 128, size=(n, k // 32, 32)).astype(np.float32)
    x[np.arange(n)[:, None], np.arange(k // 32)[None, :], rng.integers(0, 32, size=(n, k // 32))] = 127.0 * rng.choice([-1, 1], size=(n, k // 32))
    if k >= 64:
        x[0, 1] = 0.0
    return x.reshape(n, k)


def matmul_case(group, name, data, qtype, x, check):
    rows, rb = data.shape
    n, k = x.shape
    return Case(group, name, "matmul", [int(qtype), rows, rb, n, k], [data, np.ascontiguousarray(x, np.float32)], check)


def build_cases() -> list[Case]:
    rng = np.random.default_rng(2024)
    cases = []
    quants = [q for q in QTYPES if q not in FLOATS]
    # integer dots bit-exact: odd row counts, n up to 9, k not a multiple of 256 for 32-blocks
    for qtype in quants:
        shapes = [(1, 1, 256), (7, 1, 512), (13, 3, 768), (5, 9, 256)]
        if LAYOUTS[qtype][0] == 32:
            shapes += [(3, 1, 32), (11, 2, 224)]
        for rows, n, k in shapes:
            data = exact_blocks(qtype, rows, k, rng)
            x = exact_activations(n, k, rng)
            d, q, _ = ref.quantize_q8(x)
            exact = (np.repeat(d, 32, axis=1) * q).astype(np.float64) @ ref.dequantize(data, qtype).astype(np.float64).T
            assert np.array_equal(exact.astype(np.float32).astype(np.float64), exact), "inputs are not exact"
            cases.append(matmul_case("matmul_exact", f"{qtype.name} {rows}x{k} n={n}", data, qtype, x, _expect_equal(exact)))
    # random blocks with sane scales, gaussian activations: the integer-dot oracle within 1e-5
    for qtype in QTYPES:
        for rows, n, k in [(37, 1, 512), (5, 3, 256)]:
            data = random_blocks(qtype, rows, k, int(qtype) + rows)
            x = rng.standard_normal((n, k)).astype(np.float32)
            size = np.abs(x) @ np.abs(ref.dequantize(data, qtype)).T
            cases.append(matmul_case("matmul_random", f"{qtype.name} {rows}x{k} n={n}", data, qtype, x,
                                     _expect_close(ref.matmul_q8(data, qtype, x), size.max())))
    # dequantization and row gathers: bit-exact
    for qtype in QTYPES:
        data = random_blocks(qtype, 9, 512, 7 + int(qtype))
        rb = data.shape[1]
        cases.append(Case("dequant", f"dequant {qtype.name}", "dequant", [int(qtype), 9, rb, 512, 2, 9], [data],
                          _expect_equal(ref.dequantize(data[2:9], qtype))))
        ids = np.array([0, 8, 3, 3], np.int64)
        cases.append(Case("dequant", f"get_rows {qtype.name}", "get_rows", [int(qtype), 9, rb, 512, len(ids)], [data, ids],
                          _expect_equal(ref.dequantize(data[ids], qtype))))
    # packed latent-K scores for every width mix, B a multiple of 8 but not of 16
    for widths in ([8] * 4, [4] * 3 + [2] * 2 + [1] * 3, [8, 8, 4, 4, 4, 2, 2, 1, 1, 1, 1], [1] * 5, [2] * 7):
        for B in (64, 24):
            widths = np.array(widths)
            r, nblk, m = len(widths), 3, 4
            counts = svdq_ref.width_counts(widths)
            codes = [np.zeros((nblk, c, B * w // 8), np.uint8) for w, c in zip(svdq_ref.PACK_WIDTHS, counts)]
            scale = np.zeros((nblk, r), np.float16)
            mn = np.zeros((nblk, r), np.float16)
            for b in range(nblk):
                p, scale[b], mn[b] = svdq_ref.quantize_block(rng.standard_normal((B, r)).astype(np.float32), widths)
                for c, pp in zip(codes, p):
                    c[b] = pp
            z = np.concatenate([svdq_ref.dequantize_block([c[b] for c in codes], scale[b], mn[b], widths, B)
                                for b in range(nblk)])                                # (nblk*B, r)
            # one projection for all tokens, or one per rotation block of 8 tokens (relative frame)
            for rb in (0, 8):
                qt = rng.standard_normal((nblk * B // rb, m, r) if rb else (m, r)).astype(np.float32)
                want = svdq_ref.score(codes, scale, mn, widths, qt, B)
                q3 = np.abs(qt).reshape(-1, m, r)                                        # (nrb, m, r)
                zb = np.abs(z).reshape(q3.shape[0], -1, r)                               # (nrb, rb, r)
                size = np.concatenate([q3[j] @ zb[j].T for j in range(q3.shape[0])], axis=1)   # (m, nblk*B)
                cases.append(Case("latent", f"widths {widths.tolist()} B={B} rb={rb}", "latent", [*counts, nblk, m, B, rb],
                                  [*codes, scale, mn, qt], _expect_close(want, size)))
    # the one-call SVDq decode attention (latent scores, f16 sinks and window, top-k, softmax.V)
    widths = np.array([8, 4, 4, 2, 2, 1, 1, 1, 1])
    # (V as f16, or as GGML Q8_0 / Q4_0 rows: vt 8 / 2)
    for H, KV, d, B, nblk, S, nwin, topk, rb, vt in [(14, 2, 64, 64, 3, 4, 37, 10, 0, 1), (6, 3, 20, 8, 5, 2, 5, 0, 0, 1),
                                                     (14, 2, 64, 64, 3, 4, 37, 0, 32, 1), (6, 3, 20, 8, 5, 2, 5, 7, 8, 1),
                                                     (14, 2, 64, 64, 3, 4, 37, 10, 32, 2), (8, 1, 64, 64, 2, 4, 9, 0, 0, 8)]:
        r = len(widths)
        counts = svdq_ref.width_counts(widths)
        codes = [np.zeros((nblk, c, B * w // 8), np.uint8) for w, c in zip(svdq_ref.PACK_WIDTHS, counts)]
        scale = np.zeros((nblk, r), np.float16)
        mn = np.zeros((nblk, r), np.float16)
        for b in range(nblk):
            p, scale[b], mn[b] = svdq_ref.quantize_block(rng.standard_normal((B, r)).astype(np.float32), widths)
            for c, pp in zip(codes, p):
                c[b] = pp
        Tn = S + nblk * B + nwin
        q = (rng.standard_normal((H, d)) * 0.5).astype(np.float32)
        vmu = rng.standard_normal((KV, d, r + 1)).astype(np.float32)
        kf = rng.standard_normal((S + nwin, KV, d)).astype(np.float16)
        v = rng.standard_normal((Tn, KV, d)).astype(np.float16)
        vbuf = v.view(np.uint16)
        if vt != 1:
            from gguf.quants import dequantize, quantize
            vbuf = quantize(v.astype(np.float32).reshape(Tn * KV, d), vt)
            v = dequantize(vbuf, vt).reshape(Tn, KV, d)
        rope = RoPE(d, 10000.0, Tn, rb != 8)                                           # both pair layouts
        want = svdq_ref.decode_attend(q, vmu, codes, scale, mn, widths, B, kf, S, nwin, v, topk, rb, rope.cos,
                                      rope.sin, rope.neox)
        tabs = [rope.cos, rope.sin] if rb else [np.zeros(0, np.float32)] * 2
        cases.append(Case("latent", f"latent attend {H},{KV},{d} B={B} topk={topk} rb={rb} v={vt}", "latent_attend",
                          [*counts, nblk, B, H, KV, d, S, nwin, topk, rb, int(rope.neox), Tn if rb else 0, vt],
                          [*codes, scale, mn, q, vmu, kf.view(np.uint16), vbuf, np.zeros(H * Tn, np.float32),
                           *tabs],
                          _expect_close(want, np.abs(v).astype(np.float64).max() * np.ones_like(want), 1e-4)))
    # attention over f16 K/V: GQA shapes, d not a multiple of 8, T = 1; long T splits softmax.V into
    # token chunks (merged by their maxima), the masked second half leaves whole chunks at -inf
    for nq, H, KV, d, Tn in [(1, 4, 2, 64, 37), (3, 2, 1, 13, 9), (1, 8, 8, 256, 5), (2, 6, 3, 24, 1),
                             (1, 14, 2, 64, 3000), (1, 4, 1, 256, 2100), (2, 3, 1, 20, 1500), (1, 10, 1, 16, 1200)]:
        q = rng.standard_normal((nq, H, d)).astype(np.float32)
        k = rng.standard_normal((Tn, KV, d)).astype(np.float16)
        kg = np.repeat(k.astype(np.float64), H // KV, axis=1)                                # (T, H, d)
        want = np.einsum("nhd,thd->nht", q.astype(np.float64), kg)
        size = np.einsum("nhd,thd->nht", np.abs(q).astype(np.float64), np.abs(kg))
        cases.append(Case("attention", f"qk {nq},{H},{KV},{d},{Tn}", "qk", [nq, H, KV, d, Tn], [q, k.view(np.uint16)],
                          _expect_close(want, size)))
        if nq == 1:   # one decode query's whole attention in one call (token chunks per thread, merged)
            sc = want[0] - want[0].max(axis=1, keepdims=True)
            pw = np.exp(sc) / np.exp(sc).sum(axis=1, keepdims=True)                              # (H, T)
            vv = rng.standard_normal((Tn, KV, d)).astype(np.float16)
            vg = np.repeat(vv.astype(np.float64), H // KV, axis=1)                               # (T, H, d)
            cases.append(Case("attention", f"attend {H},{KV},{d},{Tn}", "attend", [H, KV, d, Tn],
                              [q, k.view(np.uint16), vv.view(np.uint16), np.zeros(H * Tn, np.float32)],
                              _expect_close(np.einsum("ht,thd->hd", pw, vg), np.abs(vg).max(), 1e-4)))
        s = (rng.standard_normal((nq, H, Tn)) * 3).astype(np.float32)
        s[..., Tn // 2 + 1:] = -np.inf                       # masked tail; one fully masked row
        s[0, 0, :] = -np.inf
        with np.errstate(invalid="ignore"):
            e = np.where(np.isinf(s), 0.0, np.exp(s.astype(np.float64) - s.max(axis=2, keepdims=True)))
            p = np.nan_to_num(e / e.sum(axis=2, keepdims=True))
        v = rng.standard_normal((Tn, KV, d)).astype(np.float16)
        want = np.einsum("nht,thd->nhd", p, np.repeat(v.astype(np.float64), H // KV, axis=1))
        cases.append(Case("attention", f"softmax_av {nq},{H},{KV},{d},{Tn}", "softmax_av", [nq, H, KV, d, Tn],
                          [s, v.view(np.uint16)], _expect_close(want, np.abs(v).astype(np.float64).max())))
    # a prefill pass's softmax.V: scores per KV head, f16 / Q8_0 / Q4_0 V rows, top-k over the packed
    # range (ties at the cut), causal -inf in the window, one head fully masked
    for nq, H, KV, Tn, p0, P, k, vt in [(3, 14, 2, 700, 4, 640, 100, T.Q4_0), (2, 8, 1, 300, 0, 300, 0, T.Q8_0),
                                        (4, 6, 3, 90, 2, 80, 79, T.F16), (2, 4, 2, 2000, 4, 1900, 37, T.Q8_0),
                                        (1, 4, 1, 3000, 4, 2900, 200, T.Q4_0)]:
        d, g = 64, H // KV
        s = (rng.standard_normal((nq, H, Tn)) * 3).astype(np.float32)
        s[:, :, p0:p0 + P:3] = np.round(s[:, :, p0:p0 + P:3])
        s[1:, :, p0 + P + 1:] = -np.inf
        s[0, 1] = -np.inf
        rows = np.ascontiguousarray(gguf_quantize(rng.standard_normal((Tn * KV, d)).astype(np.float32), vt))
        vd = gguf_dequantize(rows.view(np.uint8), vt).reshape(Tn, KV, d).astype(np.float64)
        m = s.astype(np.float64)
        svdq_ref.topk_group_mask(m, p0, P, g, k)
        mx = m.max(axis=2, keepdims=True)
        w = np.exp(m - np.where(np.isfinite(mx), mx, 0.0))
        w /= np.maximum(w.sum(axis=2, keepdims=True), 1e-300)
        want = np.einsum("nkgt,tkd->nkgd", w.reshape(nq, KV, g, Tn), vd).reshape(nq, H, d)
        kvmajor = np.ascontiguousarray(s.reshape(nq, KV, g, Tn).transpose(1, 0, 2, 3))
        cases.append(Case("attention", f"softmax_av rows {nq},{H},{KV},{Tn} k={k} {vt.name}", "softmax_av_rows",
                          [nq, H, KV, d, Tn, int(vt), p0, P, k, 1], [kvmajor, rows.view(np.uint8)],
                          _expect_close(want, np.abs(vd).max(), 1e-4)))
    # f16 conversion bit-exact: one-hot queries read single keys, T = 1 makes softmax.V copy V;
    # subnormals, -0 (read back as +0, since sums start at +0), the largest f16
    for d in (16, 19):
        specials = np.array([6e-8, -6e-8, 1e-5, -0.0, 65504, -65504, 0.5, 3.14], np.float16)
        kv = rng.standard_normal((1, 1, d)).astype(np.float16)
        kv[0, 0, :len(specials)] = specials
        want = np.float32(0.0) + kv[0, 0].astype(np.float32)
        cases.append(Case("attention", f"qk f16 exact d={d}", "qk", [1, d, 1, d, 1],
                          [np.eye(d, dtype=np.float32)[None], kv.view(np.uint16)], _expect_equal(want)))
        cases.append(Case("attention", f"softmax_av f16 exact d={d}", "softmax_av", [1, 1, 1, d, 1],
                          [np.zeros((1, 1, 1), np.float32), kv.view(np.uint16)], _expect_equal(want)))
    # malformed calls are refused before any memory is touched, on every path
    q4k = random_blocks(T.Q4_K, 4, 256, 0)
    x = np.ones((1, 256), np.float32)
    cases += [
        matmul_case("errors", "row bytes do not match", np.ascontiguousarray(q4k[:, :100]), T.Q4_K, x, _expect_error(-2)),
        Case("errors", "unsupported type", "matmul", [99, 4, 144, 1, 256], [q4k, x], _expect_error(-1)),
        matmul_case("errors", "no tokens", q4k, T.Q4_K, np.ones((0, 256), np.float32), _expect_error(-3)),
        Case("errors", "row id past the end", "get_rows", [int(T.Q4_K), 4, 144, 256, 1], [q4k, np.array([4], np.int64)], _expect_error(-4)),
        Case("errors", "negative row id", "get_rows", [int(T.Q4_K), 4, 144, 256, 1], [q4k, np.array([-1], np.int64)], _expect_error(-4)),
        Case("errors", "dequant range past the end", "dequant", [int(T.Q4_K), 4, 144, 256, 2, 5], [q4k], _expect_error(-3)),
        Case("errors", "rotation block does not divide the block", "latent", [1, 1, 0, 0, 2, 1, 16, 12],
             [np.zeros(32, np.uint8), np.zeros(16, np.uint8), np.zeros(0, np.uint8), np.zeros(0, np.uint8),
              np.zeros(4, np.uint16), np.zeros(4, np.uint16), np.zeros(4, np.float32)], _expect_error(-3)),
        Case("errors", "latent block not a multiple of 8", "latent", [1, 1, 0, 0, 2, 1, 12],
             [np.zeros(24, np.uint8), np.zeros(12, np.uint8), np.zeros(0, np.uint8), np.zeros(0, np.uint8),
              np.zeros(4, np.uint16), np.zeros(4, np.uint16), np.zeros(2, np.float32)], _expect_error(-3)),
        Case("errors", "heads not a multiple of kv heads", "qk", [1, 3, 2, 8, 4],
             [np.zeros(24, np.float32), np.zeros(64, np.uint16)], _expect_error(-3)),
        Case("errors", "top-k range past the end", "softmax_av_rows", [1, 2, 1, 32, 4, int(T.Q8_0), 2, 3, 1, 1],
             [np.zeros(8, np.float32), np.zeros(4 * 34, np.uint8)], _expect_error(-3)),
    ]
    return cases


# -- driver ------------------------------------------------------------------------------------

def _encode(calls) -> bytes:
    out = []
    for case, path in calls:
        p = list(case.params) + [0] * (16 - len(case.params))
        out.append(np.array([OP[case.op], path, *p, len(case.bufs)], np.int64).tobytes())
        for b in case.bufs:
            raw = np.ascontiguousarray(b).tobytes()
            out.append(np.array([len(raw)], np.int64).tobytes() + raw)
    return b"".join(out)


def _decode(raw: bytes, n: int):
    res, pos = [], 0
    for _ in range(n):
        rc, nb = np.frombuffer(raw, np.int64, 2, pos)
        pos += 16
        res.append((int(rc), np.frombuffer(raw, np.float32, nb // 4, pos).copy()))
        pos += int(nb)
    assert pos == len(raw), "driver output has trailing bytes"
    return res


_built: dict = {}
_ran: dict = {}


def _binary(cc: str, tmp: Path) -> Path:
    if cc not in _built:
        exe = tmp / ("driver-" + Path(cc).name)
        static = ["-static"] if cc == CROSS_GCC else []
        cmd = [cc, *CFLAGS, *static, str(NATIVE / "kernels.c"), str(NATIVE / "test_driver.c"), "-o", str(exe), "-lm"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr}"
        _built[cc] = exe
    return _built[cc]


def _run(target: str, tmp: Path):
    """Build (once per compiler) and run every case on every path the target reports, plus auto."""
    if target in _ran:
        return _ran[target]
    cc, runner, want_paths, want_active = TARGETS[target]
    exe = _binary(cc, tmp)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    info = subprocess.run([*runner, str(exe), "--paths"], capture_output=True, text=True, env=env, timeout=60)
    assert info.returncode == 0, info.stderr
    lines = dict(ln.split(":", 1) for ln in info.stdout.splitlines())
    paths, active = {int(p) for p in lines["supported"].split()}, int(lines["active"])
    cases = [c for c in build_cases() if not (target == "x86" and c.group in X86_VIA_CFFI)]
    calls = [(c, p) for c in cases for p in sorted(paths) + [AUTO]]
    fin, fout = tmp / f"{target}.in", tmp / f"{target}.out"
    fin.write_bytes(_encode(calls))
    r = subprocess.run([*runner, str(exe), str(fin), str(fout)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, f"driver exited {r.returncode}: {r.stderr[-2000:]}"
    _ran[target] = (paths, active, want_paths, want_active, calls, _decode(fout.read_bytes(), len(calls)))
    return _ran[target]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("neon_qemu")


@pytest.mark.parametrize("target", list(TARGETS))
def test_driver_paths(target, tmp):
    if _skip_reason(target):
        pytest.skip(_skip_reason(target))
    paths, active, want_paths, want_active, _, _ = _run(target, tmp)
    if want_paths is None:
        from svdq_edge.kernels import cpu_c          # x86: the driver agrees with the cffi build
        want_paths = {cpu_c.PATHS[p] for p in cpu_c.cpu_paths()}
        want_active = max(want_paths)                # the widest vector unit the CPU has
    assert paths == want_paths
    assert active == want_active


@pytest.mark.parametrize("target,group", [(t, g) for t in TARGETS for g in GROUPS if not (t == "x86" and g in X86_VIA_CFFI)])
def test_kernels_match_oracle(target, group, tmp):
    if _skip_reason(target):
        pytest.skip(_skip_reason(target))
    *_, calls, results = _run(target, tmp)
    failures = []
    for (case, path), (rc, out) in zip(calls, results):
        if case.group != group:
            continue
        try:
            case.check(rc, out)
        except AssertionError as e:
            failures.append(f"path {path} {case.name}: {e}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])
