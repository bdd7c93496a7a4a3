"""Builds one cache per layer from the user's options (-ctk, -ctv, --svdq-*), and the SVDq bases
(calibrated once per model, cached beside it keyed by the GGUF's sha256 and the options)."""
from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .. import SvdqError
from .base import CacheSpec
from .basis import compute_bases, eig_keys, load_bases, query_moment, save_bases
from .dense import DenseCache, QuantCache
from .svdq import SVDqCache
from .svdq_config import SVDqConfig, parse_bits
from ..rope import RoPE, block_centers

CALIBRATION_TEXT = Path(__file__).resolve().parent.parent / "data" / "calibration.txt"
CALIBRATION_TOKENS = 2048
MAX_SPREAD_CTX = 131072    # phase spread of a calibrated basis covers at most this many positions
BASIS_VERSION = 5          # bump when the basis or width fitting changes: old cached bases are refit


@dataclass(frozen=True)
class CacheOptions:
    ctk: str = "svdq"         # svdq | f16 | q8_0 | q4_0
    ctv: str = "f16"          # f16 | q8_0 | q4_0
    svdq: SVDqConfig = SVDqConfig()


def _dense(spec: CacheSpec, ctk: str, ctv: str):
    if ctk == "f16" and ctv == "f16":
        return DenseCache(spec)
    return QuantCache(spec, ctk, ctv)


def build_caches(model, specs: list[CacheSpec], opts: CacheOptions) -> list:
    if opts.ctk != "svdq":
        return [_dense(s, opts.ctk, opts.ctv) for s in specs]
    # a prompt basis is fitted inside each cache to its first keys: no calibration
    bases = (model_bases(model, opts.svdq) if opts.svdq.basis_source == "calibrated"
             else [None] * len(specs))
    # sliding-window layers (gemma3 local) hold at most `window` tokens: they stay dense f16, K and
    # V (-ctv applies to the SVDq layers; Gemma 3 270M: 15 x 512 tokens, 3.8 MiB of V at f16, read
    # by the C attention kernels instead of the numpy quantized-cache path)
    return [SVDqCache(s, bases[s.layer], opts.svdq, opts.ctv) if s.window is None else DenseCache(s)
            for s in specs]


def _basis_key(model, cfg: SVDqConfig) -> str:
    fields = {k: v for k, v in asdict(cfg).items() if k in ("bits", "budget", "block", "rope", "rot_block", "per_head", "rank_by", "alloc", "spread")}
    h = hashlib.sha256((model.gguf.sha256() + repr(sorted(fields.items())) + str(CALIBRATION_TOKENS) + f"v{BASIS_VERSION}").encode())
    return h.hexdigest()[:20]


def collect_keys(model, ids: list[int], pre_rope: bool, progress=None, queries: dict | None = None) -> dict:
    """Run `ids` through the model with dense f32 caches and return each layer's keys
    (T, n_kv, head_dim), pre- or post-RoPE. Uses its own Transformer sized for `ids`, so the
    calibration text fits whatever -c the user chose."""
    from ..arch.transformer import Transformer
    from ..model import N_BATCH
    a = model.args
    m = Transformer(a, model.weights, max(len(ids), 1))
    m.set_caches([DenseCache(CacheSpec(i, a.n_head, a.n_kv, a.head_dim, m.n_ctx, a.layer_window[i],
                                       m.layer_rope(i)), np.float32) for i in range(a.n_layer)])
    keys: dict[int, list] = {}

    def hook(i, k, v, q):
        keys.setdefault(i, []).append(k.copy())
        if queries is not None:
            queries.setdefault(i, []).append(q.copy())                  # (n, H, d) post-RoPE
    for s in range(0, len(ids), N_BATCH):
        m.forward(ids[s:s + N_BATCH], hidden_hook=hook)
        if progress is not None:
            progress(len(ids[s:s + N_BATCH]))
    out = {}
    for i, parts in keys.items():
        k = np.concatenate(parts)
        out[i] = k if pre_rope else m.layer_rope(i).apply(k, 0)
    if queries is not None:
        for i in list(queries):
            queries[i] = np.concatenate(queries[i])                       # (T, H, d)
    return out


def basis_path(model, cfg: SVDqConfig) -> Path:
    return model.cache_dir / f"svdq-basis-{_basis_key(model, cfg)}.npz"


def model_bases(model, cfg: SVDqConfig) -> list:
    path = basis_path(model, cfg)
    a = model.args
    if path.exists():
        return load_bases(path, a.n_layer)
    text = CALIBRATION_TEXT.read_text(encoding="utf-8")
    ids = model.tokenizer.encode(text)[:CALIBRATION_TOKENS]
    print(f"svdq-edge: calibrating the SVDq K basis on {len(ids)} tokens (once per model; cached in "
          f"{path.parent})", file=sys.stderr)
    # post-RoPE: rank latent channels by what queries read (pre-RoPE keys are rotated before the
    # dot, so their latent channels do not meet the queries' as they are)
    queries = {} if cfg.rank_by == "scores" and not cfg.pre_rope else None
    rel = cfg.rope == "relative"
    keys = collect_keys_progress(model, ids, cfg.pre_rope or rel, queries)      # pre-RoPE keys for pre / relative
    T = len(ids)
    # post-RoPE: keys and queries spread over the rotation phases of the model's whole context;
    # relative: keys rotated to their offset from their block's centre, queries (pre-RoPE) spread
    # over every distance to a block (the global layers' RoPE; sliding-window layers get no basis)
    rope = None
    if rel or (cfg.rope == "post" and cfg.spread > 1):
        rope = RoPE(a.head_dim, a.rope_base, min(max(a.n_ctx_train, T), MAX_SPREAD_CTX),
                    a.rope_neox, a.rope_scale)
        offs = rope.offsets(T, cfg.spread, rope.n_ctx)
    t = np.arange(T)
    eigs = []
    for i in range(a.n_layer):
        if a.layer_window[i] is not None:
            eigs.append(None)
            continue
        if rel:
            k = rope.apply_at(keys[i], t - block_centers(0, T, cfg.rb, 0))       # (T, KV, d)
        else:
            k = keys[i] if rope is None else rope.spread(keys[i], offs)               # (T', KV, d)
        k = k if cfg.per_head else k.reshape(k.shape[0], 1, -1)
        qm = None
        if queries is not None:
            qi = rope.apply_at(queries[i], -t) if rel else queries[i]                    # (T, H, d)
            M, n = query_moment(qi, a.n_kv, cfg.per_head)
            qm = M / n if rope is None else rope.spread_moment(M / n, offs)
        eigs.append(eig_keys(k, qm))
    # a global allocation compares importances across layers: only in score units (with queries)
    bases = compute_bases(eigs, cfg if queries is not None else replace(cfg, alloc="layer"))
    tmp = path.with_suffix(".tmp.npz")
    save_bases(tmp, bases)
    tmp.replace(path)
    return bases


def collect_keys_progress(model, ids, pre_rope, queries=None):
    from tqdm import tqdm
    with tqdm(total=len(ids), desc="calibrate", unit="tok", leave=False, file=sys.stderr) as bar:
        return collect_keys(model, ids, pre_rope, progress=bar.update, queries=queries)


def add_cli_flags(p) -> None:
    p.add_argument("--svdq-bits", default="auto",
                   help="8 group widths '4,2,2,1,1,0,0,0', a preset (1.25, 2.0, 2.5, 3.0), or auto (fitted)")
    p.add_argument("--svdq-budget", type=float, default=SVDqConfig.budget,
                   help="code bits per element for --svdq-bits auto")
    p.add_argument("--svdq-window", type=int, default=SVDqConfig.window, help="recent tokens kept in f16")
    p.add_argument("--svdq-sinks", type=int, default=SVDqConfig.sinks, help="first tokens kept in f16")
    p.add_argument("--svdq-block", type=int, default=SVDqConfig.block, help="tokens per scale block")
    p.add_argument("--svdq-rope", choices=["relative", "post", "pre"], default=SVDqConfig.rope,
                   help="frame of the stored keys: post-RoPE rotated back by their block's centre (relative), "
                        "post-RoPE as they are, or pre-RoPE (rebuilt per step)")
    p.add_argument("--svdq-rot-block", type=int, default=SVDqConfig.rot_block,
                   help="relative frame: tokens per rotation block, a multiple of 8 dividing --svdq-block "
                        "(0: one per packed block)")
    p.add_argument("--svdq-basis", choices=["per-head", "per-layer"], default="per-layer")
    p.add_argument("--svdq-basis-source", choices=["calibrated", "prompt"], default=SVDqConfig.basis_source,
                   help="basis from the calibration text (cached per model), or fitted to the first "
                        "--svdq-prompt-tokens keys of the conversation (CPU only)")
    p.add_argument("--svdq-prompt-tokens", type=int, default=SVDqConfig.prompt_tokens,
                   help="prompt basis: keys held in f16 before the basis is fitted to them")
    p.add_argument("--svdq-rank", choices=["scores", "keys"], default="scores",
                   help="rank latent channels (and give bits) by score error, key x query energy, or by key energy")
    p.add_argument("--svdq-alloc", choices=["layer", "global"], default=SVDqConfig.alloc,
                   help="fitted widths: the budget spent within each layer, or shared by all layers "
                        "by score error (calibrated basis)")
    p.add_argument("--svdq-spread", type=int, default=SVDqConfig.spread,
                   help="post-RoPE basis fitted to keys rotated to this many offsets over the context (1 = as seen)")
    p.add_argument("--svdq-topk", type=float, default=SVDqConfig.topk, help="token sparsity: packed tokens each KV head group keeps (its best by relative score; V read only for them), a count or a fraction < 1; 0 = all (default %(default)g)")


def options_from_args(args) -> CacheOptions:
    ctk = args.cache_type_k.lower()
    ctv = args.cache_type_v.lower()
    if ctk not in ("f16", "q8_0", "q4_0", "svdq"):
        raise SvdqError(f"-ctk {args.cache_type_k}: expected svdq, f16, q8_0 or q4_0")
    if ctv not in ("f16", "q8_0", "q4_0"):
        raise SvdqError(f"-ctv {args.cache_type_v}: expected f16, q8_0 or q4_0")
    try:
        cfg = SVDqConfig(bits=parse_bits(args.svdq_bits), budget=args.svdq_budget, block=args.svdq_block,
                         window=args.svdq_window, sinks=args.svdq_sinks, rope=args.svdq_rope, rot_block=args.svdq_rot_block,
                         per_head=args.svdq_basis == "per-head", topk=args.svdq_topk, rank_by=args.svdq_rank,
                         basis_source=args.svdq_basis_source, prompt_tokens=args.svdq_prompt_tokens,
                         alloc=args.svdq_alloc, spread=args.svdq_spread)
        cfg.validate()
    except ValueError as e:
        raise SvdqError(str(e)) from None
    return CacheOptions(ctk=ctk, ctv=ctv, svdq=cfg)
