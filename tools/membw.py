"""Short-context decode against the memory-bandwidth ceiling (issue 4: tokens/s against the bytes
of weights read per token and the machine's measured read bandwidth).

    python tools/membw.py [MODEL ...]      (default: both pulled models; -t threads, default 2)

Read bandwidth: THREADS threads each sum their share of a 1 GiB float32 array (numpy releases the
GIL in the reduction), best of 5 passes, so the array streams from DRAM (it is 32x the L3). Bytes
per decode token: every tensor a decode step reads in full (all blk.* weights and the output
matrix, the tied embedding where there is no output.weight); the token's embedding row is
negligible. The ceiling is bandwidth / bytes per token.
"""
import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gguf import GGUFReader                                         # noqa: E402

MODELS = {"qwen2.5-coder-0.5b": "models/cache/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
          "gemma-3-270m": "models/cache/gemma-3-270m-q4_k_m.gguf"}


def read_bandwidth(threads: int, nbytes: int = 1 << 30, passes: int = 5) -> float:
    """Bytes per second read by `threads` threads summing disjoint slices of one array."""
    a = np.ones(nbytes // 4, np.float32)                             # (n,) touched once here
    parts = np.array_split(a, threads)
    best = 0.0
    for _ in range(passes):
        ts = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, a.nbytes / (time.perf_counter() - t0))
    return best


def bytes_per_token(path: Path) -> int:
    r = GGUFReader(path)
    names = {t.name: int(t.n_bytes) for t in r.tensors}
    out = names.get("output.weight", names.get("token_embd.weight", 0))
    return sum(v for k, v in names.items() if k.startswith("blk.")) + out + names.get("output_norm.weight", 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=list(MODELS))
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()
    bw = read_bandwidth(a.threads)
    print(f"read bandwidth, {a.threads} threads: {bw / 1e9:.2f} GB/s")
    for m in a.models:
        path = ROOT / MODELS.get(m, m)
        b = bytes_per_token(path)
        print(f"{path.name}: {b / 2**20:.1f} MiB read per decode token -> ceiling {bw / b:.1f} tok/s")


if __name__ == "__main__":
    main()
