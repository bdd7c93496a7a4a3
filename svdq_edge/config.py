"""Model hyperparameters as data: one frozen dataclass filled from GGUF keys."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import SvdqError

ARCHITECTURES = ("llama", "qwen2", "gemma3")


@dataclass(frozen=True)
class ModelArgs:
    arch: str
    n_embd: int
    n_layer: int
    n_head: int
    n_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    norm_eps: float
    rope_base: float
    rope_neox: bool                 # rotate halves (qwen2, gemma3) vs adjacent pairs (llama)
    rope_scale: float = 1.0
    attn_bias: bool = False         # qwen2: bias on q, k, v
    qk_norm: bool = False           # gemma3: RMSNorm on q and k per head
    post_norms: bool = False        # gemma3: norms after attention and after the FFN
    act: str = "silu"               # gated FFN activation: silu | gelu_tanh
    embd_scale: float = 1.0         # gemma3: sqrt(n_embd)
    attn_scale: float = 0.0         # softmax scale; 0 -> 1/sqrt(head_dim)
    tied_output: bool = False
    sliding_window: int | None = None
    rope_base_local: float | None = None   # gemma3 sliding-window layers
    layer_window: tuple = field(default=())  # per layer: window size or None (global)

    def __post_init__(self):
        if self.attn_scale == 0.0:
            object.__setattr__(self, "attn_scale", 1.0 / math.sqrt(self.head_dim))
        if not self.layer_window:
            object.__setattr__(self, "layer_window", (None,) * self.n_layer)

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv * self.head_dim


def args_from_gguf(g) -> ModelArgs:
    """Build ModelArgs from a GGUFFile (see gguf_io)."""
    arch = g.arch
    if arch not in ARCHITECTURES:
        raise SvdqError(f"{g.path}: architecture {arch!r} is not supported "
                        f"(supported: {', '.join(ARCHITECTURES)})")

    def key(k, default=None, required=True):
        full = f"{arch}.{k}"
        if full in g.fields:
            return g.fields[full]
        if required and default is None:
            raise SvdqError(f"{g.path}: missing metadata key {full}")
        return default

    n_embd = int(key("embedding_length"))
    n_head = int(key("attention.head_count"))
    n_kv = int(key("attention.head_count_kv", n_head))
    head_dim = int(key("attention.key_length", n_embd // n_head))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise SvdqError(f"{g.path}: key_length != value_length is not supported")
    if n_head % n_kv:
        raise SvdqError(f"{g.path}: head_count {n_head} is not a multiple of head_count_kv {n_kv}")
    n_layer = int(key("block_count"))
    tokens = g.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens) if tokens is not None else int(key("vocab_size"))
    scaling = key("rope.scaling.type", "none", required=False)
    rope_scale = 1.0
    if scaling == "linear":
        rope_scale = float(key("rope.scaling.factor", 1.0, required=False))
    elif scaling not in ("none", None):
        raise SvdqError(f"{g.path}: rope scaling {scaling!r} is not supported")
    common = dict(
        arch=arch, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_kv=n_kv, head_dim=head_dim,
        n_ff=int(key("feed_forward_length")), n_vocab=n_vocab,
        n_ctx_train=int(key("context_length", 2048, required=False)),
        norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_base=float(key("rope.freq_base", 10000.0, required=False)), rope_scale=rope_scale,
        tied_output=not g.has("output.weight"),
    )
    if arch == "llama":
        return ModelArgs(rope_neox=False, **common)
    if arch == "qwen2":
        return ModelArgs(rope_neox=True, attn_bias=True, **common)
    # gemma3: 5 of every 6 layers use a sliding window with RoPE base 10000 (llama.cpp's swa pattern)
    window = int(key("attention.sliding_window", 512, required=False))
    pattern = 6
    layer_window = tuple(None if (i + 1) % pattern == 0 else window for i in range(n_layer))
    return ModelArgs(rope_neox=True, qk_norm=True, post_norms=True, act="gelu_tanh",
                     embd_scale=math.sqrt(n_embd), sliding_window=window, rope_base_local=10000.0,
                     layer_window=layer_window, **common)
