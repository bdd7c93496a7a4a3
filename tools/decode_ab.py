"""SVDq against f16 decode inside svdq-edge, interleaved in one process: both models are filled to
the same depth, then blocks of 8 decode steps alternate, so machine drift hits both alike.
    python tools/decode_ab.py DEPTH [STEPS] [GGUF] [CACHES]
(default GGUF: the Qwen model in models/cache; CACHES: comma list, default "svdq,f16"; "svdq:post"
is the SVDq cache in another key frame, --svdq-rope post)
"""
import sys, time
import numpy as np
from svdq_edge.model import Model
from dataclasses import replace
from svdq_edge.kvcache.factory import CacheOptions
from svdq_edge.kvcache.svdq_config import SVDqConfig
from svdq_edge import kernels
kernels.set_threads(2)
D = int(sys.argv[1]); N = int(sys.argv[2]) if len(sys.argv) > 2 else 128
path = sys.argv[3] if len(sys.argv) > 3 else "models/cache/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
caches = (sys.argv[4] if len(sys.argv) > 4 else "svdq,f16").split(",")
ms = {}
toks = np.random.default_rng(2).integers(100, 50000, D).tolist()
for name in caches:
    ctk, _, frame = name.partition(":")
    opts = CacheOptions(ctk=ctk) if not frame else CacheOptions(ctk=ctk, svdq=replace(SVDqConfig(), rope=frame))
    m = Model(path, n_ctx=D + N + 64, cache_options=opts)
    t = time.perf_counter(); m.feed(toks); print(name, "fill s", round(time.perf_counter() - t, 1), flush=True)
    ms[name] = m
gen = np.random.default_rng(3).integers(100, 50000, N).tolist()
tt = {k: 0.0 for k in ms}
for i in range(0, N, 8):
    for k, m in ms.items():
        t = time.perf_counter()
        for tk in gen[i:i + 8]:
            m.step(tk)
        tt[k] += time.perf_counter() - t
for k in ms:
    print(k, "tok/s %.2f" % (N / tt[k]))
for k in ms:
    if k != "f16" and "f16" in tt:
        print("%s/f16 %.3f" % (k, tt["f16"] / tt[k]))
import cProfile, pstats
for k, m in ms.items():
    pr = cProfile.Profile(); pr.enable()
    for tk in gen[:32]:
        m.step(tk)
    pr.disable()
    print("=====", k); pstats.Stats(pr).sort_stats("cumtime").print_stats(25)
