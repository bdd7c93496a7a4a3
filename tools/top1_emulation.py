"""Experiment behind RESULTS.md section 1.1: teacher-forced top-1 agreement with llama.cpp when our
matmuls emulate llama.cpp's arithmetic in numpy (activations quantized to Q8_0 blocks with an f16
scale, or to Q8_K for K-quant weights, then an exact float64 product; with `act+attn`, q rounded
to f16 before q.K and the softmax rounded to f16 before .V).

    python tools/top1_emulation.py gemma|qwen none|act|act+attn [n_chunks]
    REF=kld.bin python tools/top1_emulation.py ...    (compare with another llama-perplexity
                                                       --kl-divergence-base file, e.g. a rebuild)
Slow (float64 products); 2 chunks take about a minute per model.
"""
import json, sys, time
import numpy as np
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests")); sys.path.insert(0, str(ROOT))
from conftest import FIXTURES, loaded
from svdq_edge import kernels
from svdq_edge.kernels import ref
from svdq_edge.kvcache.factory import CacheOptions
from svdq_edge.perplexity import perplexity
from gguf import GGMLQuantizationType as T

MODE = sys.argv[2]  # "none" | "act" | "act+attn"
KTYPES = (T.Q4_K, T.Q5_K, T.Q6_K)

def q8_0(x):  # llama.cpp quantize_row_q8_0 (AVX2): d=fp16(amax/127), q=rint(x*(127/amax))
    n, k = x.shape
    xb = x.reshape(n, k // 32, 32).astype(np.float32)
    amax = np.abs(xb).max(2)
    idd = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(xb * idd[..., None])
    d = (amax / np.float32(127.0)).astype(np.float16).astype(np.float32)
    return (q * d[..., None]).reshape(n, k)

def q8_K(x):  # quantize_row_q8_K_ref
    n, k = x.shape
    xb = x.reshape(n, k // 256, 256).astype(np.float32)
    idx = np.abs(xb).argmax(2)
    mx = np.take_along_axis(xb, idx[..., None], 2)[..., 0]
    iscale = np.where(mx != 0, np.float32(-127.0) / np.where(mx != 0, mx, 1), 0).astype(np.float32)
    q = np.minimum(127, np.rint(xb * iscale[..., None]))
    d = np.where(mx != 0, np.float32(1.0) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
    return (q * d[..., None]).reshape(n, k)

def act(x, qtype):
    if qtype == T.F32: return x
    if qtype in (T.F16,): return x.astype(np.float16).astype(np.float32)
    if qtype in KTYPES: return q8_K(x)
    return q8_0(x)

def emu_matmul(w, x, out=None):
    x = np.ascontiguousarray(x, np.float32)
    xa = act(x, int(w.qtype)).astype(np.float64)
    res = np.empty((x.shape[0], w.data.shape[0]), np.float32)
    for r0 in range(0, w.data.shape[0], 16384):
        wd = ref.dequantize(w.data[r0:r0 + 16384], int(w.qtype)).astype(np.float64)
        res[:, r0:r0 + 16384] = xa @ wd.T
    if out is not None:
        out[:] = res; return out
    return res

if MODE != "none":
    kernels.matmul = emu_matmul
if MODE == "act+attn":
    orig = kernels.attention_f16
    def att(q, k, v, scale, q_pos0, k_pos0, window):
        n, H, d = q.shape; Tn, KV, _ = k.shape
        qh = q.astype(np.float16).astype(np.float32)
        g = H // KV
        kf = k.astype(np.float32); vf = v.astype(np.float32)
        s = np.einsum("nkgd,tkd->nkgt", qh.reshape(n, KV, g, d), kf).reshape(n, H, Tn) * np.float32(scale)
        qp = q_pos0 + np.arange(n)[:, None]; kp = k_pos0 + np.arange(Tn)[None, :]
        mask = kp > qp
        if window is not None: mask |= kp <= qp - window
        s[np.broadcast_to(mask[:, None, :], s.shape)] = -np.inf
        s = s - s.max(2, keepdims=True); p = np.exp(s); p /= p.sum(2, keepdims=True)
        p = p.astype(np.float16).astype(np.float32)
        return np.einsum("nkgt,tkd->nkgd", p.reshape(n, KV, g, Tn), vf).reshape(n, H, d).astype(np.float32)
    kernels.attention_f16 = att

key = sys.argv[1]
fixture = {"gemma": "top1_gemma-3-270m.json", "qwen": "top1_qwen2.5-coder-0.5b.json"}[key]
refj = json.loads((FIXTURES / fixture).read_text())
import os
if os.environ.get("REF"):
    sys.path.insert(0, str(ROOT / "tools"))
    from llamacpp_fixtures import read_kld_base
    from pathlib import Path
    n_ctx_, n_vocab_, tokens_, data_ = read_kld_base(Path(os.environ["REF"]))
    ch = []
    for c in range(tokens_.shape[0]):
        u = data_[c, :, 4:4 + n_vocab_]; head = data_[c, :, :4].copy().view(np.float32); nxt = tokens_[c, 257:]
        ch.append({"argmax": u.argmax(1), "logprob_next": head[:, 1] + head[:, 0] * u[np.arange(len(nxt)), nxt].astype(np.float32)})
    refj = {"first": 256, "chunks": ch}
m = loaded(key, n_ctx=512, cache_options=CacheOptions(ctk="f16"))
text = (FIXTURES / "pride_ch1_15.txt").read_text()
hits = total = 0; margins = []; DL=[]; TOP=[]; LPN=[]
def on_scored(i, pos, ours, chunk):
    global hits, total
    c = refj["chunks"][i]; first = refj["first"]
    theirs = np.asarray(c["argmax"])
    lp = ours - ours.max(1, keepdims=True); lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
    agree = ours.argmax(1) == theirs
    hits += int(agree.sum()); total += len(theirs)
    dl = lp[np.arange(len(ours)), chunk[first + 1:]] - np.asarray(c['logprob_next']); DL.extend(dl.tolist()); TOP.extend(ours.argmax(1).tolist()); LPN.extend(lp[np.arange(len(ours)), chunk[first + 1:]].tolist())
    margins.extend((lp.max(1) - lp[np.arange(len(theirs)), theirs])[~agree])
t = time.time()
perplexity(m, text, 512, int(sys.argv[3]) if len(sys.argv) > 3 else 2, progress=False, on_scored=on_scored)
print(key, MODE, f"agree {hits}/{total} = {hits/total:.4f}", "margins", np.round(sorted(margins), 4).tolist()[:40], f"{time.time()-t:.0f}s")

DL=np.array(DL); print('dlp abs mean %.4f  p50 %.4f p90 %.4f p99 %.4f max %.4f' % (np.abs(DL).mean(), *np.percentile(np.abs(DL),[50,90,99]), np.abs(DL).max()))

