"""Per-layer decode attention, f16 DenseCache against the SVDq cache in its relative (default) and
absolute post-RoPE key frames, on a Qwen-like layer (H 14, KV 2, d 64) with synthetic keys: wall
ms per attend call and a cProfile of each.
    NT=2 python tools/attn_decode_bench.py 16384 [topk]
"""
import sys, time, cProfile, pstats
import numpy as np
from svdq_edge.kvcache.base import CacheSpec
from svdq_edge.kvcache.basis import compute_basis
from svdq_edge.kvcache.dense import DenseCache
from svdq_edge.kvcache.svdq import SVDqCache
from svdq_edge.kvcache.svdq_config import SVDqConfig
from svdq_edge.rope import RoPE, block_centers
from dataclasses import replace
H, KV, d = 14, 2, 64
from svdq_edge.kernels import cpu_c; cpu_c.set_threads(int(__import__("os").environ.get("NT", "1")))
T = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
topk = float(sys.argv[2]) if len(sys.argv) > 2 else None
rope = RoPE(d, 1e6, T + 64, True)
rng = np.random.default_rng(0)
A = rng.standard_normal((KV * d, KV * d)).astype(np.float32) * np.exp(-np.arange(KV * d) / 12.0)[None, :]
keys = (rng.standard_normal((T, KV * d)).astype(np.float32) @ A.T).reshape(T, KV, d)
vals = rng.standard_normal((T, KV, d)).astype(np.float32)
spec = CacheSpec(0, H, KV, d, T + 64, None, rope)
caches = {"f16": DenseCache(spec, np.float16)}
for frame in ("relative", "post"):
    cfg = SVDqConfig(block=128, window=32, spread=1, topk=topk, rope=frame)
    t = np.arange(2048)
    calib = rope.apply(keys[:2048], 0) if frame == "post" else rope.apply_at(keys[:2048], t - block_centers(0, 2048, cfg.rb, 0))
    basis = compute_basis(calib.reshape(2048, 1, -1), cfg)
    print(frame, "widths r", basis.r)
    caches["svdq-" + frame] = SVDqCache(spec, basis, cfg)
for c in caches.values():
    for s in range(0, T, 512):
        c.append(keys[s:s + 512], vals[s:s + 512])
q = rng.standard_normal((1, H, d)).astype(np.float32)
for name, c in caches.items():
    c.attend(q, 0.125)
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(20):
            c.attend(q, 0.125)
        ts.append((time.perf_counter() - t) / 20)
    print(name, T, "ms/attend best %.3f med %.3f" % (min(ts) * 1e3, sorted(ts)[2] * 1e3))
for nm in caches:
    cProfile.run(f"for _ in range(50): caches['{nm}'].attend(q, 0.125)", "/tmp/attn_decode.prof")
    print(nm); pstats.Stats("/tmp/attn_decode.prof").sort_stats("tottime").print_stats(6)
