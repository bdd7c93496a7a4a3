"""The real models end to end: greedy answers, perplexity against llama.cpp's fixture, cache reuse,
the CLI. Uses the two GGUFs the project pulls itself (tests/conftest.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, loaded, model_file
from svdq_edge.kvcache.factory import CacheOptions
from svdq_edge.perplexity import perplexity

F16 = CacheOptions(ctk="f16")


def greedy(m, prompt, n):
    return "".join(r.text for r in m.generate(prompt, max_tokens=n, temp=0))


def test_qwen_capital_of_france():
    m = loaded("qwen", n_ctx=256, cache_options=F16)
    assert "Paris" in greedy(m, "The capital of France is", 8)


def test_qwen_writes_a_python_function_in_chat():
    m = loaded("qwen", n_ctx=1024, cache_options=F16)
    msgs = [{"role": "user", "content": "Write a Python function is_even(n) that returns True when n is even. Only code."}]
    ids = m.chat_prompt(msgs)
    out = "".join(r.text for r in m.generate(ids, max_tokens=80, temp=0))
    code = out.split("```python")[-1].split("```")[0] if "```" in out else out
    ns: dict = {}
    exec(compile(code, "<model>", "exec"), ns)          # the model's own answer, run as written
    assert ns["is_even"](4) is True and ns["is_even"](7) is False


@pytest.mark.parametrize("key,fixture", [("gemma", "perplexity_gemma-3-270m.json"),
                                         ("qwen", "perplexity_qwen2.5-coder-0.5b.json")])
def test_perplexity_matches_llama_cpp(key, fixture):
    ref = json.loads((FIXTURES / fixture).read_text())
    m = loaded(key, n_ctx=512, cache_options=F16)
    text = (FIXTURES / "pride_ch1_15.txt").read_text()
    n = 3
    res = perplexity(m, text, 512, n, progress=False)
    # llama-perplexity's running estimate after the same n chunks
    assert abs(res["ppl"] / ref["running"][n - 1] - 1) < 0.01, (res["ppl"], ref["running"][n - 1])


def test_chat_reuses_the_cache_between_turns():
    m = loaded("qwen", n_ctx=1024, cache_options=F16)
    msgs = [{"role": "user", "content": "Say hi."}]
    ids = m.chat_prompt(msgs)
    reply = "".join(r.text for r in m.generate(ids, max_tokens=8, temp=0))
    msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Again."}]
    ids2 = m.chat_prompt(msgs)
    m.feed(ids2)
    assert m.last_reused >= len(ids)                       # the first turn was not recomputed
    # and the reused cache gives the same next token as a fresh run (logits differ only by the
    # 8-bit activations of the one-token path vs the float prefill path)
    a = m.feed(ids2)
    m.reset()
    b = m.feed(ids2)
    assert int(np.argmax(a)) == int(np.argmax(b))
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()


def test_svdq_cache_close_to_f16_on_real_model():
    text = (FIXTURES / "pride_ch1_15.txt").read_text()
    f16 = perplexity(loaded("qwen", n_ctx=512, cache_options=F16), text, 512, 2, progress=False)
    m = loaded("qwen", n_ctx=512)
    sv = perplexity(m, text, 512, 2, progress=False)
    assert abs(sv["ppl"] / f16["ppl"] - 1) < 0.02, (sv["ppl"], f16["ppl"])
    # the calibrated bases really carry the keys: code bits spend most of the budget (an all-zero
    # allocation once passed the perplexity check above, since at 512 tokens the window dominates)
    for c in m.model.caches:
        spent = float(c.basis.widths.sum() + 0.5 * c.r) / c.D
        assert 0.8 * c.cfg.budget <= spent <= c.cfg.budget, (c.spec.layer, spent)


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "svdq_edge.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=900)


def test_cli_chat_pipe_and_tokenize():
    q = str(model_file("qwen"))
    r = _cli("chat", q, "--temp", "0", "-n", "12", "-c", "512", "-ctk", "f16", stdin="What is 2+2? Answer with a number.\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "4" in r.stdout
    r = _cli("tokenize", "-m", q, "-p", "<|im_start|>user")
    assert json.loads(r.stdout)[0] == 151644


def test_cli_prompt_beyond_context_is_a_message():
    r = _cli("run", "-m", str(model_file("qwen")), "-c", "16", "-p", "word " * 40, "-n", "4")
    assert r.returncode == 1 and "context" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("key,fixture,min_agree", [("gemma", "top1_gemma-3-270m.json", 0.90),
                                                   ("qwen", "top1_qwen2.5-coder-0.5b.json", 0.96)])
def test_teacher_forced_top1_agrees_with_llama_cpp(key, fixture, min_agree):
    """Measured (RESULTS.md): Gemma 93.9%, Qwen 97.3% over 4 chunks; every disagreement is a near
    tie (< 0.35 nats between the two candidates in our log-probs) and the mean log-prob of the true
    token differs by < 0.01 nats: the gap is float noise (our own prefill and one-token paths agree
    97.6% on Gemma), not a modelling difference."""
    ref = json.loads((FIXTURES / fixture).read_text())
    m = loaded(key, n_ctx=512, cache_options=F16)
    text = (FIXTURES / "pride_ch1_15.txt").read_text()
    hits, total, dlp, margins = 0, 0, [], []

    def on_chunk(i, logits, chunk):
        nonlocal hits, total
        c = ref["chunks"][i]
        first = ref["first"]
        ours = logits[first:511]
        theirs = np.asarray(c["argmax"])
        lp = ours - ours.max(1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
        agree = ours.argmax(1) == theirs
        hits += int(agree.sum())
        total += len(theirs)
        margins.extend((lp.max(1) - lp[np.arange(len(theirs)), theirs])[~agree])
        dlp.extend(lp[np.arange(len(ours)), chunk[first + 1:]] - np.asarray(c["logprob_next"]))

    perplexity(m, text, 512, 2, progress=False, on_chunk=on_chunk)
    assert hits / total >= min_agree, hits / total
    assert max(margins, default=0.0) < 0.5, max(margins)
    assert abs(float(np.mean(dlp))) < 0.01
