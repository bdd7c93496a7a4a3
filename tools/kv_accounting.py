"""KV memory projections of the default caches at 2k-32k tokens (RESULTS.md 2.3): loads each model
with n_ctx=32768 and prints the markdown rows; no tokens are run."""
import numpy as np
from svdq_edge.model import Model
for name, path in [("Qwen2.5-Coder 0.5B", "models/cache/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), ("Gemma 3 270M", "models/cache/gemma-3-270m-q4_k_m.gguf")]:
    m = Model(path, n_ctx=32768)
    caches = m.model.caches
    g = [c for c in caches if c.spec.window is None]
    for T in (2048, 8192, 16384, 32768):
        kb = float(np.mean([c.k_bits_per_elem(at=T) for c in g]))
        kbytes = sum(c.k_nbytes(at=T) for c in g)
        f16k = sum(T * c.spec.n_kv * c.spec.head_dim * 2 for c in g)
        print(f"| {name} | {T:,} | {kb:.2f} | {kbytes/2**20:.2f} | {f16k/2**20:.1f} | {kbytes/f16k:.3f} | {m.kv_nbytes_at(T)/2**20:.1f} |")
