"""`svdq-edge info`: what a GGUF holds and how svdq-edge would run it."""
from __future__ import annotations

import json
from collections import Counter

from . import kernels
from .config import args_from_gguf
from .gguf_io import GGUFFile
from .pull import resolve
from .quants import type_name


def info(model: str | None, as_json: bool = False) -> None:
    path = resolve(model)
    g = GGUFFile(path)
    a = args_from_gguf(g)
    types = Counter(type_name(int(t.tensor_type)) for t in g.tensors.values())
    n_params = sum(int(t.n_elements) for t in g.tensors.values())
    tmpl = g.get("tokenizer.chat_template")
    backend = kernels.backend_name()
    extra = {}
    mod = kernels.backend()
    if hasattr(mod, "active_path"):
        extra["cpu_path"] = mod.active_path()
    try:
        from .kernels import cuda_numba
        extra["gpu"] = cuda_numba.describe_gpu()
    except ImportError:
        extra["gpu"] = "no CUDA GPU (numba-cuda not installed)"
    except Exception as e:  # a driver that fails to answer
        extra["gpu"] = f"no CUDA GPU ({type(e).__name__})"
    d = {"file": str(path), "bytes": g.size, "architecture": a.arch, "name": g.get("general.name"),
         "parameters": n_params, "n_layer": a.n_layer, "n_embd": a.n_embd, "n_head": a.n_head,
         "n_kv": a.n_kv, "head_dim": a.head_dim, "n_ff": a.n_ff, "n_vocab": a.n_vocab,
         "n_ctx_train": a.n_ctx_train, "rope_base": a.rope_base,
         "sliding_window": a.sliding_window, "tensor_types": dict(types),
         "tokenizer": g.get("tokenizer.ggml.model"), "pre_tokenizer": g.get("tokenizer.ggml.pre"),
         "chat_template": "from GGUF" if tmpl else "none in GGUF (a built-in is used)",
         "kv_bytes_per_token_f16": 2 * 2 * a.n_kv * a.head_dim * a.n_layer,
         "backend": backend, **extra}
    if as_json:
        print(json.dumps(d, indent=1))
        return
    for k, v in d.items():
        print(f"{k:24s} {v}")
