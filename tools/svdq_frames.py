"""Which frame to code keys in: an offline attention proxy on a real model at 8k tokens.

Keys, values and queries of every layer are collected once (2048 calibration tokens, and 8192
tokens of the evaluation text with the queries of its last 512 positions; cached as .npz in
--work). Per frame, each global layer's basis and widths are fitted to the calibration keys at
--budget code bits (as the cache fits them, ranked by the queries' score error), the eval keys of
positions 4 .. 7556 are coded in 128-token blocks and rebuilt, and the last 512 queries attend
over exact and rebuilt keys. Reported per layer and averaged: the KL divergence of the attention
distribution (exact || rebuilt), the relative error of the attention output, and the relative K
error. Frames:
  post        absolute post-RoPE, basis spread over 16 offsets (the cache's --svdq-rope post)
  post-mean   post-RoPE after subtracting the rotated pre-RoPE mean (not a cache option: isolates
              how much of the post-RoPE loss is the key bias turned into variance by RoPE)
  pre         pre-RoPE (--svdq-rope pre)
  relative-N  rotated back by the centre of N-token blocks (--svdq-rope relative --svdq-rot-block N)

    python tools/svdq_frames.py --model qwen2.5-coder-0.5b [--frames post,pre,relative-64] [--layers 3,12]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from svdq_edge.arch.transformer import Transformer                            # noqa: E402
from svdq_edge.kernels import svdq_ref                                       # noqa: E402
from svdq_edge.kvcache.base import CacheSpec                                 # noqa: E402
from svdq_edge.kvcache.basis import eig_keys, fit_widths, query_moment       # noqa: E402
from svdq_edge.kvcache.dense import DenseCache                               # noqa: E402
from svdq_edge.kvcache.factory import CALIBRATION_TEXT, CacheOptions         # noqa: E402
from svdq_edge.model import N_BATCH, Model                                   # noqa: E402
from svdq_edge.pull import resolve                                           # noqa: E402
from svdq_edge.rope import RoPE, block_centers                               # noqa: E402
from svdq_eval import direct_roundtrip                                       # noqa: E402

TEXT = ROOT / "tests" / "fixtures" / "pride_ch1_15.txt"
S, B, W = 4, 128, 32            # the cache's sinks, block and window


def collect(M, ids, q_last):
    """Pre-RoPE keys, values (f16) and post-RoPE queries of the last q_last positions, per layer."""
    a = M.args
    m = Transformer(a, M.weights, len(ids))
    m.set_caches([DenseCache(CacheSpec(i, a.n_head, a.n_kv, a.head_dim, m.n_ctx, a.layer_window[i],
                                       m.layer_rope(i)), np.float32) for i in range(a.n_layer)])
    K, V, Q, pos = {}, {}, {}, [0]

    def hook(i, k, v, q):
        K.setdefault(i, []).append(k.astype(np.float16))
        V.setdefault(i, []).append(v.astype(np.float16))
        lo = max(0, len(ids) - q_last - pos[0])
        if lo < k.shape[0]:
            Q.setdefault(i, []).append(q[lo:].astype(np.float32))
    for s in range(0, len(ids), N_BATCH):
        pos[0] = s
        m.forward(ids[s:s + N_BATCH], hidden_hook=hook)
    out = {}
    for i in K:
        out[f"k{i}"], out[f"v{i}"], out[f"q{i}"] = np.concatenate(K[i]), np.concatenate(V[i]), np.concatenate(Q[i])
    return out


def arrays(M, name, work: Path, n_eval: int):
    work.mkdir(parents=True, exist_ok=True)
    paths = work / f"{name}_cal.npz", work / f"{name}_eval{n_eval}.npz"
    if not paths[0].exists():
        ids = M.tokenizer.encode(CALIBRATION_TEXT.read_text())[:2048]
        np.savez(paths[0], **collect(M, ids, 2048))
    if not paths[1].exists():
        ids = M.tokenizer.encode(TEXT.read_text())[:n_eval]
        np.savez(paths[1], **collect(M, ids, 512))
    return np.load(paths[0]), np.load(paths[1])


def rot(x, pos, rope: RoPE):
    """x (n, m, d) float64 rotated by pos (n,) (negative: back), the model's pair layout."""
    return rope.apply_at(x.astype(np.float32), pos).astype(np.float64)


def code(z, widths):
    out = np.empty_like(z)
    for s in range(0, z.shape[0], B):
        p, sc, mn = svdq_ref.quantize_block(z[s:s + B].astype(np.float32), widths)
        out[s:s + B] = svdq_ref.dequantize_block(p, sc, mn, widths, B)
    return out


def layer_eval(a, rope, cal, ev, i, frame, budget, n_ctx):
    KV, H, d = a.n_kv, a.n_head, a.head_dim
    D, grp = KV * d, a.n_head // a.n_kv
    kc = cal[f"k{i}"].astype(np.float64)                                      # (Tc, KV, d) pre-RoPE
    qc = cal[f"q{i}"].astype(np.float32)                                      # (Tc, H, d) post-RoPE
    ke, ve, qe = ev[f"k{i}"].astype(np.float64), ev[f"v{i}"].astype(np.float64), ev[f"q{i}"].astype(np.float64)
    Tc, T, P = kc.shape[0], ke.shape[0], qe.shape[0]
    tc, te = np.arange(Tc), np.arange(T)
    nb = (T - P - S - W) // B
    pk = slice(S, S + nb * B)
    tp = np.arange(S, S + nb * B)
    kpost = rot(ke, te, rope)
    offs = rope.offsets(Tc, 16, n_ctx)
    kind, _, n = frame.partition("-")
    rb = int(n) if kind == "relative" else 0
    mup = np.zeros((1, KV, d))
    if frame == "post-mean":
        mup = kc.mean(0, keepdims=True)
    if kind == "post":                        # basis of spread post-RoPE keys, post-RoPE query moment
        kk = np.concatenate([rot(rot(kc - mup, tc, rope), np.full(Tc, o), rope) for o in offs])
        M, m = query_moment(qc, KV, False)
    else:                                     # pre-RoPE query moment (spread below)
        kk = kc if kind == "pre" else rot(kc, tc - block_centers(0, Tc, rb, 0), rope)
        M, m = query_moment(rot(qc, -tc, rope).astype(np.float32), KV, False)
    Mq = rope.spread_moment(M / m, offs)
    e = eig_keys(kk.reshape(kk.shape[0], 1, D).astype(np.float32), Mq)
    w = fit_widths(e.imp, budget, 32.0 / B)
    r = max(1, int(np.count_nonzero(w)))
    V, mu, w = e.V[0][:, :r].astype(np.float64), e.mean[0].astype(np.float64), w[:r]
    bits = (w.sum() + 32.0 / B * r) / D
    if kind == "post":
        rm = rot(np.broadcast_to(mup, (nb * B, KV, d)), tp, rope)             # rotated mean (post-mean)
        z = (kpost[pk] - rm).reshape(-1, D) - mu
        kh = (code(z @ V, w) @ V.T + mu).reshape(-1, KV, d) + rm
    elif kind == "pre":
        z = ke[pk].reshape(-1, D) - mu
        kh = rot((code(z @ V, w) @ V.T + mu).reshape(-1, KV, d), tp, rope)
    else:
        c = block_centers(S, nb * B, rb, S)
        z = rot(kpost[pk], -c, rope).reshape(-1, D) - mu
        kh = rot((code(z @ V, w) @ V.T + mu).reshape(-1, KV, d), c, rope)
    kapp = kpost.copy()
    kapp[pk] = kh
    qpos = np.arange(T - P, T)
    mask = te[None, :] > qpos[:, None]
    kl, oe = [], []
    for g in range(KV):
        q = qe[:, g * grp:(g + 1) * grp] / np.sqrt(d)                           # (P, grp, d)
        lp = []
        for k in (kpost, kapp):
            s = np.einsum("pgd,td->gpt", q, k[:, g])
            s[:, mask] = -np.inf
            s -= s.max(-1, keepdims=True)
            lp.append(s - np.log(np.exp(s).sum(-1, keepdims=True)))
        p1 = np.exp(lp[0])
        kl.append(np.nansum(p1 * (lp[0] - lp[1]), -1).ravel())
        o1, o2 = p1 @ ve[:, g], np.exp(lp[1]) @ ve[:, g]
        oe.append((((o1 - o2) ** 2).sum(-1) / (o1 ** 2).sum(-1)).ravel())
    kerr = np.sum((kpost[pk] - kh) ** 2) / np.sum((kpost[pk] - kpost[pk].mean(0)) ** 2)
    # the error ratio: against per-channel quantization of the post-RoPE keys themselves
    # with the same widths (widest to the highest-variance channels), same quantizer and blocks
    full_w = np.zeros(D, np.int64)
    full_w[:r] = w
    kd = direct_roundtrip(kpost[pk].reshape(-1, 1, D).astype(np.float32), full_w, B).reshape(-1, KV, d)
    ratio = np.sum((kpost[pk] - kh) ** 2) / np.sum((kpost[pk] - kd) ** 2)
    return dict(kl=float(np.mean(np.concatenate(kl))), out_err=float(np.mean(np.concatenate(oe))),
                k_err=float(kerr), err_ratio=float(ratio), code_bits=float(bits), r=r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--frames", default="post,post-mean,pre,relative-16,relative-32,relative-64,relative-128")
    ap.add_argument("--budget", type=float, default=1.5)
    ap.add_argument("--layers", default="", help="comma list (default: every global layer)")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--work", default="/tmp/svdq_frames")
    a = ap.parse_args()
    M = Model(resolve(a.model), n_ctx=2048, cache_options=CacheOptions(ctk="f16"))
    args = M.args
    cal, ev = arrays(M, a.model, Path(a.work), a.tokens)
    n_ctx = min(args.n_ctx_train, 131072)
    rope = RoPE(args.head_dim, args.rope_base, n_ctx, args.rope_neox, args.rope_scale)
    layers = [int(x) for x in a.layers.split(",")] if a.layers else \
        [i for i in range(args.n_layer) if args.layer_window[i] is None]
    res = {f: {} for f in a.frames.split(",")}
    for i in layers:
        for f in res:
            res[f][i] = layer_eval(args, rope, cal, ev, i, f, a.budget, n_ctx)
            print(f"layer {i:2d} {f:13s} " + " ".join(f"{k} {v:.4f}" for k, v in res[f][i].items()), flush=True)
    keys = ("kl", "out_err", "k_err", "err_ratio", "code_bits")
    summary = {f: {k: float(np.mean([x[k] for x in v.values()])) for k in keys} for f, v in res.items()}
    print("| frame | attention KL | output error | K error | K error ratio vs per-channel | code bits |")
    for f, s in summary.items():
        print(f"| {f} | " + " | ".join(f"{s[k]:.4f}" for k in keys) + " |")
    out = ROOT / "tools" / "results" / f"svdq_frames_{a.model}.json"
    out.write_text(json.dumps({"command": " ".join(sys.argv), "layers": layers, "summary": summary,
                               "per_layer": res}, indent=1))


if __name__ == "__main__":
    main()
