"""Perplexity as llama-perplexity computes it: non-overlapping chunks of n_ctx tokens, the first
token of each chunk replaced by BOS when the model adds one, each chunk run from an empty cache,
and only the second half of each chunk scored."""
from __future__ import annotations

import math
import sys

import numpy as np

from . import SvdqError


def log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """logits: (n, V), targets: (n,) -> log p(target) (n,) in float64."""
    lg = logits.astype(np.float64)
    mx = lg.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(lg - mx).sum(axis=1))
    return lg[np.arange(len(targets)), targets] - lse


def perplexity(model, text: str, n_ctx: int, max_chunks: int = -1, progress: bool = True,
               on_scored=None) -> dict:
    """on_scored(i, pos, logits, chunk): called per prefill batch of chunk i with the logits
    (m, V) of the scored positions pos..pos+m-1 (the whole chunk's logits are never held: at 16k
    tokens and a 262k vocabulary they would be 17 GB)."""
    from .model import N_BATCH
    tk = model.tokenizer
    tokens = tk.encode(text, parse_special=False)
    add_bos = tk.add_bos
    n_chunk = len(tokens) // n_ctx
    if max_chunks > 0:
        n_chunk = min(n_chunk, max_chunks)
    if n_chunk < 1:
        raise SvdqError(f"the text is {len(tokens)} tokens, need at least 2*{n_ctx // 2} = {n_ctx} (-c)")
    first = n_ctx // 2
    nll, nll2, count = 0.0, 0.0, 0
    running, top1_hits = [], 0
    for i in range(n_chunk):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if add_bos:
            chunk[0] = tk.bos_id
        model.reset()
        # batches of N_BATCH from position 0, as llama-perplexity's -b; logits only where scored
        for s in range(0, n_ctx, N_BATCH):
            e = min(s + N_BATCH, n_ctx)
            logits = model.feed(chunk[:e], all_logits=e > first)                  # (e - s, V) when scored
            lo, hi = max(s, first), min(e, n_ctx - 1)
            if hi <= lo:
                continue
            rows = logits[lo - s:hi - s]                                          # positions lo..hi-1
            tgt = np.asarray(chunk[lo + 1:hi + 1], dtype=np.int64)
            lp = log_softmax_at(rows, tgt)
            top1_hits += int(np.sum(np.argmax(rows, axis=1) == tgt))
            nll -= lp.sum()
            nll2 += np.sum(lp * lp)
            count += len(tgt)
            if on_scored is not None:
                on_scored(i, lo, rows, chunk)
        running.append(math.exp(nll / count))
        if progress:
            print(f"[{i + 1}]{running[-1]:.4f}", end="," if i + 1 < n_chunk else "\n",
                  file=sys.stderr, flush=True)
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    err = ppl * math.sqrt(max(var, 0.0) / max(count - 1, 1)) if count > 1 else 0.0
    return {"ppl": ppl, "ppl_err": err, "chunks": n_chunk, "n_ctx": n_ctx, "tokens": len(tokens),
            "scored": count, "running": running, "top1_self": top1_hits / count}
