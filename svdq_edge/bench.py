"""`svdq-edge bench`: prefill and decode tokens/s like llama-bench, plus memory and KV accounting."""
from __future__ import annotations

import resource
import statistics
import time

import numpy as np

from . import kernels


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _tokens(model, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.integers(100, model.args.n_vocab - 100, size=n).tolist()


def _kv(model) -> dict:
    n = max(len(model.tokens), 1)
    caches = model.model.caches
    kb = sum(c.k_bits_per_elem() for c in caches) / len(caches)
    return {"kv_bytes": model.kv_nbytes(), "kv_bytes_per_token": model.kv_nbytes() / n,
            "k_bits_per_elem": kb}


def bench(model, n_prompt: int, n_gen: int, depth: int, reps: int = 1) -> list[dict]:
    rows = []
    a = model.args
    base = {"model": model.path.name, "arch": a.arch, "backend": "cuda" if getattr(model, "device", "cpu") == "cuda" else kernels.backend_name(),
            "ctk": model.cache_options.ctk, "ctv": model.cache_options.ctv, "depth": depth}
    need = depth + max(n_prompt, n_gen) + 1
    if model.n_ctx < need:
        from . import SvdqError
        raise SvdqError(f"-c {model.n_ctx} is too small for depth {depth} + test ({need} tokens)")
    # warm-up: compile kernels, touch the weights
    model.reset()
    model.feed(_tokens(model, 8, 0))
    model.step(_tokens(model, 1, 1)[0])
    ctx = _tokens(model, depth, 2) if depth else []
    if n_prompt > 0:
        ts = []
        for r in range(reps):
            model.reset()
            if ctx:
                model.feed(ctx)
            toks = _tokens(model, n_prompt, 10 + r)
            t0 = time.perf_counter()
            model.feed(ctx + toks)
            ts.append(n_prompt / (time.perf_counter() - t0))
        rows.append({**base, "test": f"pp{n_prompt}" + (f" @ d{depth}" if depth else ""),
                     "tps": statistics.mean(ts), "tps_std": statistics.pstdev(ts), **_kv(model),
                     "rss_peak_mib": _rss_peak_mib()})
    if n_gen > 0:
        ts = []
        for r in range(reps):
            model.reset()
            if ctx:
                model.feed(ctx)
            else:
                model.feed(_tokens(model, 1, 3))
            toks = _tokens(model, n_gen, 20 + r)
            t0 = time.perf_counter()
            for t in toks:
                model.step(t)
            ts.append(n_gen / (time.perf_counter() - t0))
        rows.append({**base, "test": f"tg{n_gen}" + (f" @ d{depth}" if depth else ""),
                     "tps": statistics.mean(ts), "tps_std": statistics.pstdev(ts), **_kv(model),
                     "rss_peak_mib": _rss_peak_mib()})
    return rows


def print_table(rows: list[dict]) -> None:
    hdr = f"| {'model':32s} | {'backend':7s} | {'K/V':10s} | {'test':16s} | {'t/s':>16s} | {'K bits':>6s} | {'KV B/tok':>9s} | {'peak RSS':>9s} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['model'][:32]:32s} | {r['backend']:7s} | {r['ctk'] + '/' + r['ctv']:10s} | "
              f"{r['test']:16s} | {r['tps']:9.2f} ± {r['tps_std']:5.2f} | {r['k_bits_per_elem']:6.2f} | "
              f"{r['kv_bytes_per_token']:9.0f} | {r['rss_peak_mib']:5.0f} MiB |")
