"""SVDq measurements on the real models: latent spectra of keys, K reconstruction error against
per-channel quantization in the original space at equal bits, and perplexity / KL divergence /
top-1 agreement of the SVDq cache against the f16 cache on the same tokens.

    python tools/svdq_eval.py spectra  --model qwen2.5-coder-0.5b      -> tools/results/*.json, *.png
    python tools/svdq_eval.py quality  --model qwen2.5-coder-0.5b --chunks 4
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tools" / "results"
TEXT = ROOT / "tests" / "fixtures" / "pride_ch1_15.txt"

from svdq_edge.kernels import svdq_ref                                   # noqa: E402
from svdq_edge.kvcache.basis import compute_basis, fit_widths, schedule_widths   # noqa: E402
from svdq_edge.kvcache.factory import CALIBRATION_TEXT, CacheOptions, collect_keys  # noqa: E402
from svdq_edge.kvcache.svdq_config import PRESETS, SVDqConfig              # noqa: E402
from svdq_edge.model import Model                                         # noqa: E402
from svdq_edge.pull import resolve                                        # noqa: E402
from svdq_edge.rope import RoPE                                           # noqa: E402


def latent_roundtrip(keys, basis, B=64):
    """keys (T, G, D) -> reconstruction through the basis with blockwise min/max codes."""
    T, G, D = keys.shape
    out = np.empty_like(keys)
    for g in range(G):
        z = (keys[:, g] - basis.mean[g]) @ basis.V[g]                            # (T, r)
        for s in range(0, T - T % B, B):
            p, sc, mn = svdq_ref.quantize_block(z[s:s + B], basis.widths)
            z[s:s + B] = svdq_ref.dequantize_block(p, sc, mn, basis.widths, B)
        out[:, g] = z @ basis.V[g].T + basis.mean[g]
    return out[: T - T % B]


def direct_roundtrip(keys, widths_per_channel, B=64):
    """Per-channel quantization in the original space with the same quantizer as the latent codes
    (svdq_ref.quantize_block: blockwise ranges, 1/2-bit clipping) and the same multiset of widths,
    the widest to the highest-variance channels; dropped channels are replaced by their mean."""
    T, G, D = keys.shape
    T = T - T % B
    out = np.empty((T, G, D), np.float32)
    w_sorted = np.sort(widths_per_channel)[::-1]
    for g in range(G):
        k = keys[:T, g]
        order = np.argsort(-k.var(axis=0))
        used = order[w_sorted > 0]
        out[:, g] = k.mean(0)
        for s in range(0, T, B):
            p, sc, mn = svdq_ref.quantize_block(k[s:s + B, used], w_sorted[w_sorted > 0])
            out[s:s + B, g, used] = svdq_ref.dequantize_block(p, sc, mn, w_sorted[w_sorted > 0], B)
    return out


def cmd_spectra(a):
    path = resolve(a.model)
    m = Model(path, n_ctx=4096, cache_options=CacheOptions(ctk="f16"))
    ids = m.tokenizer.encode(TEXT.read_text())[: a.tokens]
    cal = m.tokenizer.encode(CALIBRATION_TEXT.read_text())[:2048]
    res = {"model": path.name, "tokens": len(ids), "text": TEXT.name, "layers": {}}
    spectra = {}
    # post-RoPE keys are measured where a long context puts them: the evaluation keys rotated to
    # 4 offsets over the model's context; the calibrated basis is fitted as the cache fits it
    # (spread over 16 offsets), and without the spread ("calibrated-as-seen") for comparison
    a_ = m.args
    big = RoPE(a_.head_dim, a_.rope_base, min(a_.n_ctx_train, 131072), a_.rope_neox, a_.rope_scale)
    ev_offs = big.offsets(len(ids), 4, big.n_ctx)
    cal_offs = big.offsets(len(cal), SVDqConfig.spread, big.n_ctx)
    res["eval_offsets_post_rope"] = ev_offs.tolist()
    for rope in ("post", "pre"):
        keys = collect_keys(m, ids, pre_rope=rope == "pre")
        ckeys = collect_keys(m, cal, pre_rope=rope == "pre")
        for i, k in keys.items():
            if m.args.layer_window[i] is not None:
                continue
            lay = res["layers"].setdefault(str(i), {})
            sources = {"calibrated": ckeys[i]}
            if rope == "post":
                k = big.spread(k, ev_offs)
                sources = {"calibrated": big.spread(ckeys[i], cal_offs), "calibrated-as-seen": ckeys[i]}
            for grouping in ("per-head", "per-layer"):
                kk = k if grouping == "per-head" else k.reshape(k.shape[0], 1, -1)
                src_keys = {n: (c if grouping == "per-head" else c.reshape(c.shape[0], 1, -1)) for n, c in sources.items()}
                D = kk.shape[2]
                s = np.linalg.svd(kk[:, 0] - kk[:, 0].mean(0), compute_uv=False)
                e = np.cumsum(s ** 2) / np.sum(s ** 2)
                spectra[(rope, grouping, i)] = (s ** 2 / np.sum(s ** 2)).tolist()
                entry = {"channels_for_90pct": int(np.searchsorted(e, 0.9) + 1), "D": D}
                for name, bits in [("1.25", PRESETS["1.25"]), ("2.0", PRESETS["2.0"]), ("auto-1.0", None),
                                   ("auto-1.5", None), ("auto-2.0", None)]:
                    budget = float(name.split("-")[1]) if bits is None else 0
                    for src, basis_keys in list(src_keys.items()) + [("prompt", kk)]:
                        cfg = SVDqConfig(bits=bits, budget=budget or 1.5, rope=rope,
                                         per_head=grouping == "per-head")
                        basis = compute_basis(basis_keys, cfg)
                        rec = latent_roundtrip(kk.copy(), basis)
                        full_w = np.zeros(D, np.int64)
                        full_w[: basis.r] = basis.widths
                        dirr = direct_roundtrip(kk, full_w)
                        ref = kk[: rec.shape[0]]
                        e_svdq = float(np.sum((rec - ref) ** 2))
                        e_dir = float(np.sum((dirr - ref) ** 2))
                        entry[f"{name}/{src}"] = {"code_bits": float(full_w.sum() / D), "err_ratio": e_svdq / e_dir,
                                                  "rel_err": float(np.sqrt(e_svdq / np.sum(ref ** 2)))}
                lay[f"{rope}/{grouping}"] = entry
        print(f"{rope}: done", file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = f"svdq_spectra_{a.model}"
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, grouping in zip(axes, ("per-head", "per-layer")):
            for (rope, gr, i), sp in spectra.items():
                if gr == grouping:
                    ax.semilogy(sp, color="C0" if rope == "post" else "C1", alpha=0.4,
                                label=f"{rope}-RoPE" if i == min(k[2] for k in spectra) else None)
            ax.set_title(f"{a.model}: latent energy, {grouping}")
            ax.set_xlabel("latent channel")
            ax.set_ylabel("energy fraction")
            ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / f"{stem}.png", dpi=90)
    except ImportError:
        pass
    print(json.dumps(summarize(res), indent=1))


def summarize(res):
    """Mean over layers of each (rope/grouping, schedule/source) error ratio."""
    acc: dict = {}
    for lay in res["layers"].values():
        for mode, entry in lay.items():
            for k, v in entry.items():
                if isinstance(v, dict):
                    acc.setdefault(f"{mode} {k}", []).append((v["err_ratio"], v["code_bits"], v["rel_err"]))
            acc.setdefault(f"{mode} channels_for_90pct", []).append((entry["channels_for_90pct"], entry["D"], 0))
    return {k: [round(float(np.mean([x[0] for x in v])), 3), round(float(np.mean([x[1] for x in v])), 3),
                round(float(np.mean([x[2] for x in v])), 3)] for k, v in acc.items()}


def cmd_quality(a):
    from svdq_edge.perplexity import perplexity
    path = resolve(a.model)
    text = TEXT.read_text()
    configs = [("f16", CacheOptions(ctk="f16"))]
    for spec in [c for c in a.configs.split(";") if c]:
        kw = dict(x.split("=") for x in spec.split(",") if x)
        bits = kw.get("bits", "auto")
        cfg = SVDqConfig(bits=None if bits == "auto" else PRESETS.get(bits) or tuple(int(c) for c in bits.split(":")),
                         budget=float(kw.get("budget", 1.5)), rope=kw.get("rope", SVDqConfig.rope), rot_block=int(kw.get("rb", SVDqConfig.rot_block)),
                         per_head=kw.get("basis", "per-layer") == "per-head", window=int(kw.get("window", SVDqConfig.window)),
                         topk=float(kw["topk"]) if "topk" in kw else None, rank_by=kw.get("rank", "scores"),
                         basis_source=kw.get("source", "calibrated"), prompt_tokens=int(kw.get("ptok", 1024)),
                         block=int(kw.get("block", SVDqConfig.block)), sinks=int(kw.get("sinks", 4)),
                         alloc=kw.get("alloc", "layer"), spread=int(kw.get("spread", SVDqConfig.spread)))
        configs.append((spec, CacheOptions(ctk="svdq", ctv=kw.get("ctv", "f16"), svdq=cfg)))
    configs += [(q, CacheOptions(ctk=q)) for q in a.baselines.split(",") if q]
    base_lp = {}
    rows = []
    # the f16 run's log-probs can be kept on disk (--reuse-f16 DIR) and reused by later runs on
    # the same model, text, context and chunks: it is the longest run at 8k/16k
    reuse = Path(a.reuse_f16) / f"f16_{a.model}_c{a.ctx}_n{a.chunks}" if a.reuse_f16 else None
    if reuse is not None and (reuse / "row.json").exists():
        rows.append(json.loads((reuse / "row.json").read_text()))
        for f in reuse.glob("lp_*.npy"):
            _, i, pos = f.stem.split("_")
            base_lp[(int(i), int(pos))] = np.load(f, mmap_mode="r")
        configs = configs[1:]
        print(f"f16 baseline reused from {reuse}", file=sys.stderr)
    for name, opts in configs:
        m = Model(path, n_ctx=a.ctx, cache_options=opts)
        kld, top1 = [], []

        def on_scored(i, pos, lg, chunk, name=name):
            lp = lg.astype(np.float32)
            lp -= lp.max(1, keepdims=True)
            lp -= np.log(np.exp(lp).sum(1, keepdims=True))
            if name == "f16":
                base_lp[(i, pos)] = lp.astype(np.float16)        # baseline log-probs, f16 to fit 16k x 262k
            else:
                b = base_lp[(i, pos)].astype(np.float32)
                kld.extend(np.sum(np.exp(b) * (b - lp), axis=1).tolist())          # per scored token
                top1.extend((b.argmax(1) == lp.argmax(1)).tolist())
        t0 = time.time()
        res = perplexity(m, text, a.ctx, a.chunks, progress=False, on_scored=on_scored)
        caches = m.model.caches
        kbits = float(np.mean([c.k_bits_per_elem(at=a.ctx) for c in caches if c.spec.window is None]))
        row = {"config": name, "ppl": res["ppl"], "ppl_vs_f16": None, "kld": float(np.mean(kld)) if kld else 0.0,
               "top1_vs_f16": float(np.mean(top1)) if top1 else 1.0, "k_bits_global_layers_at_ctx": kbits,
               "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        if name == "f16" and reuse is not None:
            reuse.mkdir(parents=True, exist_ok=True)
            for (i, pos), lp in base_lp.items():
                np.save(reuse / f"lp_{i}_{pos}.npy", lp)
            (reuse / "row.json").write_text(json.dumps(row))
    for r in rows:
        r["ppl_vs_f16"] = r["ppl"] / rows[0]["ppl"] - 1
    OUT.mkdir(parents=True, exist_ok=True)
    out = {"model": path.name, "text": TEXT.name, "ctx": a.ctx, "chunks": a.chunks, "rows": rows,
           "command": " ".join(sys.argv)}
    (OUT / f"svdq_quality_{a.model}_c{a.ctx}{a.tag}.json").write_text(json.dumps(out, indent=1))
    for r in rows:
        print(f"| {r['config']:40s} | {r['ppl']:8.3f} | {100 * r['ppl_vs_f16']:+6.2f}% | {r['kld']:.4f} | "
              f"{100 * r['top1_vs_f16']:5.1f}% | {r['k_bits_global_layers_at_ctx']:5.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["spectra", "quality"])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--configs", default="bits=auto,budget=1.5;bits=1.25;bits=2.0")
    ap.add_argument("--baselines", default="q8_0,q4_0")
    ap.add_argument("--tag", default="", help="suffix of the output file name")
    ap.add_argument("--reuse-f16", default="", help="directory keeping the f16 baseline's log-probs between runs")
    a = ap.parse_args()
    {"spectra": cmd_spectra, "quality": cmd_quality}[a.what](a)
