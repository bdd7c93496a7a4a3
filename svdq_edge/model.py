"""The Python API: load a GGUF (path or registry name) into a ready-to-run model.

    from svdq_edge import load
    m = load("gemma-3-270m", n_ctx=4096)
    for r in m.generate("The capital of France is", max_tokens=16, temp=0):
        print(r.text, end="")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import SvdqError, kernels
from .arch.transformer import Transformer, load_weights
from .chat_template import pick_template
from .config import ModelArgs, args_from_gguf
from .gguf_io import GGUFFile
from .kvcache.base import CacheSpec

# tokens per prefill batch: 256 keeps a batch's 8-bit activation codes in L2 (pp512 of Gemma
# ~940 tok/s in 512-token batches, 1200-1480 in 256) and halves the batch's activation
# temporaries (peak RSS of an 8k fill -19 MiB); llama.cpp's -b/-ub default is 512
N_BATCH = 256


def cache_dir_for(path: Path) -> Path:
    """Where derived files (tokenizer model, SVDq bases) are cached: beside the GGUF if writable."""
    d = path.parent / ".svdq-cache"
    try:
        d.mkdir(parents=True, exist_ok=True)
        return d
    except OSError:
        d = Path.home() / ".cache" / "svdq-edge"
        d.mkdir(parents=True, exist_ok=True)
        return d


def release_freed_arrays() -> None:
    """Keep large arrays (4 MiB and up: prefill score passes, activations, rebuilt keys) in their
    own mappings, returned to the system when freed. glibc raises its mmap threshold to the size of
    any large block freed (up to 32 MiB); after that a long prefill's temporaries fragment the heap
    (peak RSS 792 -> 753 MiB over a 32k fill with a 256 KiB threshold; RESULTS.md). Not lower than
    4 MiB: the native attention's per-call scratch (about 1 MiB at 32k) would then be mapped and
    faulted in every layer of every decode step (-13% decode at 32k). No-op without mallopt."""
    import ctypes
    try:
        ctypes.CDLL(None).mallopt(-3, 4 << 20)          # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        pass


class Model:
    """A loaded model: GGUF + config + weights + tokenizer + chat template + KV caches.

    `tokens` is what the caches hold, in order; `feed()` reuses the longest common prefix.
    """

    def __init__(self, path: str | Path, n_ctx: int = 4096, cache_options=None,
                 chat_template_file: str | None = None, threads: int | None = None, device: str = "cpu"):
        from .kvcache.factory import CacheOptions
        release_freed_arrays()
        # --device cuda (issue 5): fails here, before loading, when there is no GPU or numba-cuda
        from .arch.cuda_transformer import check_device, device_cache_options
        self.device = check_device(device, cache_options)
        cache_options = device_cache_options(self.device, cache_options or CacheOptions())
        self.path = Path(path)
        self.gguf = GGUFFile(self.path)
        self.args: ModelArgs = args_from_gguf(self.gguf)
        if n_ctx <= 0:
            n_ctx = self.args.n_ctx_train
        if n_ctx > self.args.n_ctx_train:
            raise SvdqError(f"-c {n_ctx}: larger than the model's training context {self.args.n_ctx_train}")
        self.n_ctx = n_ctx
        self.weights = load_weights(self.gguf, self.args)
        self.cache_dir = cache_dir_for(self.path)
        from .tokenizer import Tokenizer
        self.tokenizer = Tokenizer.from_gguf(self.gguf, self.cache_dir)
        tk = self.tokenizer
        pieces = self.gguf.get("tokenizer.ggml.tokens") or []
        piece = lambda i: pieces[i] if i is not None and 0 <= i < len(pieces) else ""
        self.template = pick_template(
            self.gguf.get("tokenizer.chat_template"), self.args.arch,
            lambda p: tk.id_of(p) is not None, piece(tk.bos_id), piece(tk.eos_id), chat_template_file)
        if threads:
            kernels.set_threads(threads)
        kernels.quiet_blas()
        if self.device == "cuda":
            from .arch.cuda_transformer import CudaTransformer
            self.model = CudaTransformer(self.args, self.weights, n_ctx)
        else:
            # the backend's decode layouts (C on avx512: Q5_0, Q8_0 in quads), the file's pages released
            kernels.repack_weights(self.weights, self.gguf.release)
            self.model = Transformer(self.args, self.weights, n_ctx)
        self.cache_options = cache_options or CacheOptions()
        self._embd_release = None          # whether feed/step drop the embedding's pages (first use)
        self.tokens: list[int] = []
        self.last_reused = 0
        self._make_caches()

    # -- caches -----------------------------------------------------------------------------------
    def cache_specs(self) -> list[CacheSpec]:
        a = self.args
        return [CacheSpec(i, a.n_head, a.n_kv, a.head_dim, self.n_ctx, a.layer_window[i],
                          self.model.layer_rope(i)) for i in range(a.n_layer)]

    def _make_caches(self) -> None:
        from .kvcache.factory import build_caches
        self.model.set_caches(build_caches(self, self.cache_specs(), self.cache_options))
        self.tokens = []

    def reset(self) -> None:
        self._make_caches()

    def kv_nbytes(self) -> int:
        return sum(c.nbytes() for c in self.model.caches)

    def kv_nbytes_at(self, n_tokens: int) -> int:
        """KV bytes the caches would hold after n_tokens (start-up accounting)."""
        return sum(c.nbytes(at=n_tokens) for c in self.model.caches)

    # -- running ----------------------------------------------------------------------------------
    def check_fits(self, n_tokens: int) -> None:
        if n_tokens > self.n_ctx:
            raise SvdqError(f"prompt is {n_tokens} tokens, the context is {self.n_ctx} (-c); "
                            f"raise -c or shorten the prompt")

    def feed(self, ids: list[int], all_logits: bool = False, progress=None) -> np.ndarray:
        """Make the caches hold exactly `ids` (reusing the common prefix) and return the logits of
        the last token (or all new tokens). Feeds in N_BATCH chunks. On interruption the caches
        are rewound to the tokens that were completely processed."""
        self.check_fits(len(ids))
        keep = 0
        lim = min(len(self.tokens), len(ids) - 1)       # always recompute at least one token
        while keep < lim and self.tokens[keep] == ids[keep]:
            keep += 1
        self.rewind(keep)
        self.last_reused = len(self.tokens)
        out = []
        logits = None
        try:
            for s in range(keep, len(ids), N_BATCH):
                chunk = ids[s:s + N_BATCH]
                logits = self.model.forward(chunk, all_logits=all_logits)
                self._release_embedding()
                self.tokens.extend(chunk)
                if all_logits:
                    out.append(logits)
                if progress is not None:
                    progress(len(chunk))
        except BaseException:
            self.rewind(len(self.tokens))
            raise
        return np.concatenate(out) if all_logits else logits

    def step(self, token: int) -> np.ndarray:
        """Append one token and return the next-token logits (n_vocab,)."""
        if len(self.tokens) + 1 > self.n_ctx:
            raise SvdqError(f"context full ({self.n_ctx} tokens, -c)")
        try:
            logits = self.model.forward([token])
        except BaseException:
            self.rewind(len(self.tokens))
            raise
        self.tokens.append(token)
        if len(self.tokens) % N_BATCH == 0:
            self._release_embedding()
        return logits

    def _release_embedding(self) -> None:
        """Drop the token embedding's mapped pages: each of its rows is read once per token, so a
        long prompt of varied tokens would otherwise keep most of it resident (Qwen2.5-0.5B: 116 MB,
        ~3/4 of it after 32k random tokens). The pages stay in the page cache and come back on a
        minor fault. Not where the embedding is also the output matrix (read every step) or was
        copied out of the file."""
        w = self.weights
        if self._embd_release is None:
            self._embd_release = (self.device == "cpu" and w.tok_embd is not w.output
                                  and np.shares_memory(w.tok_embd.data, self.gguf.mm))
        if self._embd_release:
            self.gguf.release(w.tok_embd.data)

    def rewind(self, n: int) -> None:
        """Forget tokens at positions >= n; a cache that cannot rewind is rebuilt from scratch."""
        n = min(n, len(self.tokens))
        try:
            self.model.trim(n)
            self.tokens = self.tokens[:n]
        except ValueError:
            # some caches (packed SVDq blocks) cannot cut inside a block: replay the kept tokens
            kept = self.tokens[:n]
            self._make_caches()
            if kept:
                self.feed(kept)

    # -- convenience ------------------------------------------------------------------------------
    def generate(self, prompt: str | list[int], **kw):
        from .generate import stream_generate
        return stream_generate(self, prompt, **kw)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        text = self.template.render(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_bos=False, parse_special=True)


def load(model: str | Path | None = None, **kw) -> Model:
    from .pull import resolve
    return Model(resolve(None if model is None else str(model)), **kw)
