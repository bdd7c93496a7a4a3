"""Single-tensor matvec throughput of the C backend (one token, best of 3): GB/s of weight bytes.
    python tools/matvec_bench.py [qwen|gemma]   (default qwen)"""
import time, sys, numpy as np
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from svdq_edge.kernels import cpu_c
from gguf import GGUFReader
GEMMA = len(sys.argv) > 1 and sys.argv[1] == "gemma"
r = GGUFReader(str(__import__("pathlib").Path(__file__).resolve().parent.parent / "models/cache" /
                   ("gemma-3-270m-q4_k_m.gguf" if GEMMA else "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")))
T = {t.name: t for t in r.tensors}
tot = 0
NAMES = (["token_embd.weight", "blk.3.attn_q.weight", "blk.3.ffn_gate.weight", "blk.3.ffn_down.weight", "blk.0.attn_v.weight"]
         if GEMMA else ["output.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_down.weight", "blk.1.ffn_down.weight", "blk.1.attn_v.weight"])
for name in NAMES:
    t = T[name]; rows = int(t.shape[1]); k = int(t.shape[0])
    data = np.asarray(t.data).view(np.uint8).reshape(rows, -1)
    xx = np.random.default_rng(0).standard_normal((1, k)).astype(np.float32)
    out = np.empty((1, rows), np.float32)
    cpu_c.matmul(data, int(t.tensor_type), xx, out)
    reps = max(3, int(3e8 / data.nbytes)); best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps): cpu_c.matmul(data, int(t.tensor_type), xx, out)
        best = min(best, (time.perf_counter() - t0) / reps)
    print(f"{name:24s} {t.tensor_type.name:5s} {data.nbytes/1e6:7.1f} MB  {best*1e3:7.3f} ms  {data.nbytes/best/1e9:5.1f} GB/s")
