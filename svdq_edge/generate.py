"""Generation as a stack of generators: generate_step yields token ids, stream_generate adds text
and statistics. The CLI, the chat REPL and the benchmarks consume the same stream."""
from __future__ import annotations

import time
from dataclasses import dataclass

from .sampling import Sampler, SamplerParams


@dataclass
class Response:
    text: str                 # new text since the previous response (complete UTF-8 only)
    token: int | None         # the token id, None for the final flush
    prompt_tokens: int = 0
    prompt_tps: float = 0.0   # prefill tokens/s (new tokens actually computed)
    generated: int = 0
    gen_tps: float = 0.0
    finish: str | None = None  # "stop" (end of turn), "length", "context"


def generate_step(model, prompt_ids: list[int], sampler: Sampler, max_tokens: int, stop_ids,
                  stats: dict):
    """Feed the prompt (reusing the cache prefix) then yield sampled tokens one at a time."""
    t0 = time.perf_counter()
    logits = model.feed(prompt_ids)
    t1 = time.perf_counter()
    stats["prompt_new"] = len(prompt_ids) - model.last_reused
    stats["prompt_s"] = t1 - t0
    history = list(prompt_ids)
    n = 0
    while max_tokens < 0 or n < max_tokens:
        tok = sampler(logits, history)
        history.append(tok)
        n += 1
        if tok in stop_ids:
            stats["finish"] = "stop"
            yield tok
            return
        yield tok
        if len(model.tokens) + 1 >= model.n_ctx:
            stats["finish"] = "context"
            return
        logits = model.step(tok)
    stats["finish"] = "length"


def stream_generate(model, prompt, max_tokens: int = -1, sampler: Sampler | None = None,
                    stop_ids=None, add_bos: bool | None = None, **sampler_kw):
    """Yield Response objects with streamed text. `prompt` is text or token ids."""
    from .tokenizer import StreamDecoder
    tk = model.tokenizer
    ids = tk.encode(prompt, add_bos=add_bos) if isinstance(prompt, str) else list(prompt)
    if not ids:
        ids = [tk.bos_id] if tk.bos_id is not None else []
    model.check_fits(len(ids))
    if sampler is None:
        sampler = Sampler(SamplerParams(**sampler_kw))
    stop = set(tk.eot_ids) if stop_ids is None else set(stop_ids)
    dec = StreamDecoder(tk)
    stats: dict = {}
    t_start = None
    n = 0
    for tok in generate_step(model, ids, sampler, max_tokens, stop, stats):
        if t_start is None:
            t_start = time.perf_counter()
        n += 1
        text = "" if tok in stop else dec.feed(tok)
        el = time.perf_counter() - t_start
        yield Response(text, tok, len(ids), stats["prompt_new"] / max(stats["prompt_s"], 1e-9),
                       n, (n - 1) / el if el > 0 and n > 1 else 0.0)
    el = time.perf_counter() - t_start if t_start else 0.0
    yield Response(dec.flush(), None, len(ids),
                   stats.get("prompt_new", 0) / max(stats.get("prompt_s", 0.0), 1e-9),
                   n, (n - 1) / el if el > 0 and n > 1 else 0.0, stats.get("finish", "length"))
