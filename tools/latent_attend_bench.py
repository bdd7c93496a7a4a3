"""The C one-call SVDq decode attention alone (svdq_latent_attend, 2 threads) on a Qwen-shaped
layer (H 14, KV 2, d 64, r = 60 latent channels of mixed widths, 128-token blocks, random codes),
in the absolute post-RoPE frame and the relative frame with 128/64/32-token rotation blocks, then
the relative-128 frame with group top-k (--svdq-topk) and Q8_0 / Q4_0 V rows, and the packed
scores alone (one projection per rotation block given): best ms per call of 5 x 20.
    python tools/latent_attend_bench.py [DEPTH] [TOPK] [qwen|gemma]   (default 16384 1024 qwen)
gemma: its global layers' shape (H 4, KV 1, d 256, r = 136: widths as its fitted basis, layer 11),
then a window layer's decode attention over 512 f16 keys (kernels.attention_f16, one query).
"""
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from test_quants import packed_blocks                       # noqa: E402
from svdq_edge.kernels import cpu_c                         # noqa: E402
from svdq_edge.rope import RoPE                             # noqa: E402

cpu_c.set_threads(2)
rng = np.random.default_rng(0)
T = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
K = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
GEMMA = len(sys.argv) > 3 and sys.argv[3] == "gemma"
H, KV, d, B = (4, 1, 256, 128) if GEMMA else (14, 2, 64, 128)
nblk = T // B
widths = np.array([8] * 4 + [4] * 12 + [2] * 20 + [1] * 24 if not GEMMA else [4] * 53 + [2] * 55 + [1] * 28)
r = len(widths)
codes, scale, mn = packed_blocks(rng, widths, nblk, B)
S, nwin = 4, 40
Tt = S + nblk * B + nwin
q = rng.standard_normal((H, d)).astype(np.float32)
vmu = rng.standard_normal((KV, d, r + 1)).astype(np.float32)
kf = rng.standard_normal((S + nwin, KV, d)).astype(np.float16)
v = rng.standard_normal((Tt, KV, d)).astype(np.float16)
rope = RoPE(d, 1e6, Tt, True)
sc = cpu_c.PackedScorer(codes, scale, mn, B)
buf = np.empty(H * Tt, np.float32)


def best(f):
    f()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(20):
            f()
        ts.append((time.perf_counter() - t) / 20)
    return min(ts) * 1e3


for name, rot in [("absolute", None)] + [(f"relative-{rb}", (rb, rope.cos, rope.sin, True)) for rb in (128, 64, 32)]:
    print(f"{name:24s} depth {T}: {best(lambda: sc.attend(q, vmu, kf, S, nwin, v, 0, buf, rot)):.3f} ms")
rot = (B, rope.cos, rope.sin, True)
for vtype in (1, 8, 2):
    vq = v if vtype == 1 else cpu_c.quantize_rows(v.reshape(-1, d).astype(np.float32), vtype).reshape(Tt, KV, -1)
    for k in (0, K):
        name = f"relative-{B} topk {k} V{ {1: 'f16', 8: 'q8_0', 2: 'q4_0'}[vtype]}"
        print(f"{name:24s} depth {T}: {best(lambda: sc.attend(q, vmu, kf, S, nwin, vq, k, buf, rot, vtype)):.3f} ms")
qt = rng.standard_normal((nblk, H, r)).astype(np.float32)
print(f"{'packed scores only':24s} depth {T}: {best(lambda: sc(qt)):.3f} ms")
if GEMMA:   # a sliding-window layer: one query over its 512 f16 keys and values
    from svdq_edge import kernels                           # noqa: E402
    kw = rng.standard_normal((512, KV, d)).astype(np.float16)
    vw = rng.standard_normal((512, KV, d)).astype(np.float16)
    qw = rng.standard_normal((1, H, d)).astype(np.float32)
    print(f"{'window f16, 512 keys':24s}: {best(lambda: kernels.attention_f16(qw, kw, vw, 0.0625, 1000, 489, 512)) * 1e3:.1f} us")
