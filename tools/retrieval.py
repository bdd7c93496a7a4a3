"""Long-context retrieval suite, generated deterministically from a seed: single needle, multiple
keys (one asked), and variable tracking, hidden in prose at a given context length. Each case is
asked through the model's chat template and scored by whether the greedy answer contains the
expected value.

    python tools/retrieval.py --model qwen2.5-coder-0.5b --lengths 2048,8192 --caches f16,svdq --seeds 2
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from svdq_edge.kvcache.factory import CacheOptions   # noqa: E402
from svdq_edge.model import Model                     # noqa: E402
from svdq_edge.pull import resolve                    # noqa: E402

HAY = (ROOT / "tests" / "fixtures" / "pride_ch1_15.txt").read_text().split("\n\n")
WORDS = ["amber", "falcon", "cobalt", "juniper", "quartz", "harbor", "meadow", "saffron", "tundra", "willow"]


def make_case(kind: str, seed: int, n_tokens: int, tok) -> dict:
    rng = random.Random(f"{kind}-{seed}-{n_tokens}")
    facts, question, answer = [], "", ""
    if kind == "needle":
        key, val = rng.choice(WORDS), str(rng.randrange(1_000_000, 9_999_999))
        facts = [f"The special magic number for {key} is {val}."]
        question, answer = f"What is the special magic number for {key}?", val
    elif kind == "multikey":
        keys = rng.sample(WORDS, 4)
        vals = [str(rng.randrange(1_000_000, 9_999_999)) for _ in keys]
        facts = [f"The special magic number for {k} is {v}." for k, v in zip(keys, vals)]
        i = rng.randrange(4)
        question, answer = f"What is the special magic number for {keys[i]}?", vals[i]
    else:  # variable tracking: a chain of assignments
        val = str(rng.randrange(10_000, 99_999))
        names = [f"V{rng.randrange(100, 999)}" for _ in range(4)]
        facts = [f"VAR {names[0]} = {val}."] + [f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(3)]
        question, answer = f"What number does VAR {names[-1]} hold? Follow the chain of VAR assignments.", val
    # prose up to the budget, facts at seeded depths, in order
    budget = n_tokens - 80
    paras, used, start = [], 0, rng.randrange(len(HAY))
    while used < budget:
        p = HAY[(start + len(paras)) % len(HAY)].strip()
        if p:
            used += len(tok.encode(p, add_bos=False)) + 1
            paras.append(p)
        else:
            paras.append("")
    depths = sorted(rng.uniform(0.1, 0.9) for _ in facts)
    for d, f in zip(depths, facts):
        paras.insert(int(d * len(paras)), f)
    body = "\n".join(paras)
    prompt = ("Read the text and answer the question at the end.\n\n" + body +
              f"\n\nQuestion: {question} Answer with the number only.")
    return {"kind": kind, "seed": seed, "prompt": prompt, "answer": answer}


def run(a):
    path = resolve(a.model)
    results = []
    for cache in a.caches.split(","):
        opts = CacheOptions(ctk=cache)
        for L in (int(x) for x in a.lengths.split(",")):
            m = Model(path, n_ctx=L + 256, cache_options=opts)
            for kind in a.kinds.split(","):
                for seed in range(a.seeds):
                    c = make_case(kind, seed, L, m.tokenizer)
                    ids = m.chat_prompt([{"role": "user", "content": c["prompt"]}])
                    m.reset()
                    t0 = time.time()
                    out = "".join(r.text for r in m.generate(ids, max_tokens=16, temp=0))
                    ok = c["answer"] in out
                    kbits = sum(x.k_bits_per_elem() for x in m.model.caches if x.spec.window is None)
                    kbits /= max(1, sum(1 for x in m.model.caches if x.spec.window is None))
                    row = {"cache": cache, "svdq": repr(m.cache_options.svdq) if cache == "svdq" else None, "length": L, "tokens": len(ids), "kind": kind, "seed": seed,
                           "ok": ok, "answer": c["answer"], "output": out.strip()[:40],
                           "k_bits": round(kbits, 3), "kv_mib": round(m.kv_nbytes() / 2**20, 2),
                           "seconds": round(time.time() - t0, 1)}
                    results.append(row)
                    print(json.dumps(row), flush=True)
    out = ROOT / "tools" / "results" / f"retrieval_{a.model}{a.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--lengths", default="2048,8192")
    ap.add_argument("--caches", default="f16,svdq")
    ap.add_argument("--kinds", default="needle,multikey,vartrack")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix of the output file name")
    run(ap.parse_args())
