"""SVDq against f16 decode inside svdq-edge, interleaved in one process: both models are filled to
the same depth, then blocks of 8 decode steps alternate, so machine drift hits both alike.
    python tools/decode_ab.py DEPTH [STEPS] [GGUF]     (default GGUF: the Qwen model in models/cache)
"""
import sys, time
import numpy as np
from svdq_edge.model import Model
from svdq_edge.kvcache.factory import CacheOptions
from svdq_edge import kernels
kernels.set_threads(2)
D = int(sys.argv[1]); N = int(sys.argv[2]) if len(sys.argv) > 2 else 128
path = sys.argv[3] if len(sys.argv) > 3 else "models/cache/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
ms = {}
toks = np.random.default_rng(2).integers(100, 50000, D).tolist()
for ctk in ("svdq", "f16"):
    m = Model(path, n_ctx=D + N + 64, cache_options=CacheOptions(ctk=ctk))
    t = time.perf_counter(); m.feed(toks); print(ctk, "fill s", round(time.perf_counter() - t, 1), flush=True)
    ms[ctk] = m
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
print("svdq/f16 %.3f" % (tt["f16"] / tt["svdq"]))
import cProfile, pstats
for k, m in ms.items():
    pr = cProfile.Profile(); pr.enable()
    for tk in gen[:32]:
        m.step(tk)
    pr.disable()
    print("=====", k); pstats.Stats(pr).sort_stats("cumtime").print_stats(25)
