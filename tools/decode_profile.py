"""Where a decode step's time goes at depth, without the long prefill: every layer's cache is
filled straight through cache.append with synthetic keys and values (random, with a decaying
spectrum like real keys; timing does not depend on the values), then STEPS decode steps of the
real model run under cProfile. Prints ms per step and the top functions by own time. With
--prefill N, one prefill batch of N tokens at that depth is timed and profiled instead.
    python tools/decode_profile.py DEPTH [STEPS] [-ctk svdq] [-ctv q4_0] [--svdq-topk 1024] [--model qwen]
    python tools/decode_profile.py DEPTH --prefill 512
    python tools/decode_profile.py DEPTH 128 --model gemma --phases   # ms per step by phase, no cProfile
--phases times each layer's calls with perf_counter wrappers instead (attn_in, ffn, the caches'
append and attend, or append_attend where a cache takes both in one call, split into window and
global layers, and the output matmul): cProfile's
overhead and millisecond totals hide the phases of a 7 ms step.
Use it to find what to speed up; the figures to report come from tools/llamacpp_bench.py.
"""
import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from svdq_edge import kernels                                   # noqa: E402
from svdq_edge.kvcache.factory import CacheOptions              # noqa: E402
from svdq_edge.kvcache.svdq_config import SVDqConfig            # noqa: E402
from svdq_edge.model import Model                               # noqa: E402

MODELS = {"qwen": "models/cache/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
          "gemma": "models/cache/gemma-3-270m-q4_k_m.gguf"}

ap = argparse.ArgumentParser()
ap.add_argument("depth", type=int)
ap.add_argument("steps", type=int, nargs="?", default=32)
ap.add_argument("-ctk", default="svdq")
ap.add_argument("-ctv", default="f16")
ap.add_argument("--svdq-topk", type=float, default=None)
ap.add_argument("--model", default="qwen")
ap.add_argument("-t", type=int, default=2)
ap.add_argument("--top", type=int, default=25)
ap.add_argument("--prefill", type=int, default=0, help="time one prefill batch of this many tokens")
ap.add_argument("--phases", action="store_true", help="ms per step by phase (wrappers), not cProfile")
a = ap.parse_args()
kernels.set_threads(a.t)
opts = CacheOptions(ctk=a.ctk, ctv=a.ctv,
                    svdq=SVDqConfig() if a.svdq_topk is None else SVDqConfig(topk=a.svdq_topk))
m = Model(ROOT / MODELS.get(a.model, a.model), n_ctx=a.depth + 2 * max(a.steps, a.prefill) + 64, cache_options=opts)
m.feed([1, 2, 3, 4, 5, 6, 7, 8])                                # compile / warm up
m.reset()
rng = np.random.default_rng(0)
ar = m.args
spec = np.exp(-np.arange(ar.head_dim) / 8.0).astype(np.float32)  # (d,) decaying key spectrum
t0 = time.perf_counter()
for c in m.model.caches:
    for s in range(0, a.depth, 512):
        n = min(512, a.depth - s)
        k = rng.standard_normal((n, ar.n_kv, ar.head_dim)).astype(np.float32) * spec * 8   # (n, KV, d)
        v = rng.standard_normal((n, ar.n_kv, ar.head_dim)).astype(np.float32)             # (n, KV, d)
        c.append(k, v)
m.tokens = rng.integers(100, 1000, a.depth).tolist()
print(f"synthetic fill of {a.depth} tokens: {time.perf_counter() - t0:.1f} s, KV {m.kv_nbytes() / 2**20:.1f} MiB")
if a.prefill:
    import resource
    new = rng.integers(100, 1000, a.prefill).tolist()
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    pr.enable()
    m.feed(m.tokens + new)
    pr.disable()
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"prefill of {a.prefill} at depth {a.depth}: {dt:.2f} s = {a.prefill / dt:.1f} tok/s (profiled); "
          f"peak RSS {rss:.0f} MiB")
    pstats.Stats(pr).sort_stats("tottime").print_stats(a.top)
    sys.exit(0)
toks = rng.integers(100, 1000, a.steps).tolist()
for t in toks[:4]:
    m.step(t)
t0 = time.perf_counter()
for t in toks[4:]:
    m.step(t)
dt = (time.perf_counter() - t0) / (len(toks) - 4)
print(f"decode at depth {a.depth}: {dt * 1e3:.2f} ms/step = {1 / dt:.1f} tok/s")
if a.phases:
    import svdq_edge.arch.transformer as transformer
    acc: dict = {}
    pc = time.perf_counter

    def wrap(obj, name, key):
        f = getattr(obj, name)

        def timed(*args, **kw):
            t = pc()
            r = f(*args, **kw)
            acc[key] = acc.get(key, 0.0) + pc() - t
            return r
        setattr(obj, name, timed)
    dl = m.model._decode
    wrap(dl, "attn_in", "attn_in")
    wrap(dl, "ffn", "ffn")
    for i, c in enumerate(m.model.caches):
        kind = "global" if ar.layer_window[i] is None else "window"
        wrap(c, "append", kind + ".append")
        wrap(c, "attend", kind + ".attend")
        if getattr(c, "append_attend", None) is not None:       # one call for both (dense f16 caches)
            wrap(c, "append_attend", kind + ".append_attend")
    wrap(transformer.kernels, "matmul", "output")       # the decode step's one matmul outside the layers
    t0 = pc()
    for t in toks[4:]:
        m.step(t)
    tot = (pc() - t0) / (len(toks) - 4) * 1e3
    parts = {k: v / (len(toks) - 4) * 1e3 for k, v in sorted(acc.items())}
    print(f"phases, ms per step (wrapped: {tot:.3f} ms/step): " + "  ".join(f"{k} {v:.3f}" for k, v in parts.items())
          + f"  other {tot - sum(parts.values()):.3f}")
    sys.exit(0)
pr = cProfile.Profile()
pr.enable()
for t in toks[:8]:
    m.step(t)
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(a.top)
