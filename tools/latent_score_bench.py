"""Latent-K score kernel timing: NBLK blocks of 128 packed tokens (widths 8/4/2/1 for 8/16/24/33
channels, r = 81) scored for 14 queries on one thread, checked against the numpy oracle.
Usage: python tools/latent_score_bench.py [NBLK]"""
import time, numpy as np, sys
from svdq_edge.kernels import cpu_c
from svdq_edge.kernels import svdq_ref
cpu_c.set_threads(1)
nblk, B, m = int(sys.argv[1]) if len(sys.argv) > 1 else 32, 128, 14
counts = [8, 16, 24, 33]   # n8, n4, n2, n1 -> r = 81
rng = np.random.default_rng(0)
codes = [rng.integers(0, 256, (nblk, n, B * w // 8), dtype=np.uint8) for n, w in zip(counts, (8, 4, 2, 1))]
r = sum(counts)
scale = rng.random((nblk, r)).astype(np.float16); mn = rng.random((nblk, r)).astype(np.float16)
qt = rng.standard_normal((m, r)).astype(np.float32)
widths = np.array(sum([[w] * n for n, w in zip(counts, (8, 4, 2, 1))], []))
for _ in range(3):
    t = time.process_time()
    for _ in range(20): out = cpu_c.score(codes, scale, mn, widths, qt, B)
    print("score ms", (time.process_time() - t) / 20 * 1e3, "tokens", nblk * B)
ref = svdq_ref.score(codes, scale, mn, widths, qt, B)
print("maxerr", np.abs(out - ref).max() / np.abs(ref).max())
