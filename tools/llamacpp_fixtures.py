"""Produce the llama.cpp reference fixtures in tests/fixtures/ (run once; the test suite only reads
the JSON). Needs llama.cpp's tools built from the llama-cpp-python 0.3.36 source package:

    pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36 -d /tmp/llref
    tar xzf /tmp/llref/llama_cpp_python-0.3.36.tar.gz -C /tmp/llref
    cd /tmp/llref/llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    cmake --build build -j2 --target llama-tokenize llama-perplexity llama-bench

    python tools/llamacpp_fixtures.py tokenize --bin /tmp/llref/.../build/bin
    python tools/llamacpp_fixtures.py perplexity --bin ...     (parses llama-perplexity logs)
    python tools/llamacpp_fixtures.py top1                     (reads --kl-divergence-base files)
    python tools/llamacpp_fixtures.py variants --bin ...       (llama.cpp against itself, see below)
    python tools/llamacpp_fixtures.py greedy --bin ...         (needs the llama-simple target too)

`variants` reruns the top1 command with the build in --bin, flash attention off and on, and keeps
those argmaxes too: how often llama.cpp agrees with itself (another build, another attention
kernel) is the noise floor that our own agreement is judged against.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODELS = {"gemma-3-270m": "gemma-3-270m-q4_k_m.gguf", "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"}

TEXTS = [
    "", " ", "  ", "Hello world", " Hello world", "Hello  world\n\n  x", "The capital of France is",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class Foo:\n\tdef bar(self):\n\t\tpass\n",
    "a\tb\t\tc   d    e     f      g       h        i",
    "\n\n\n", "line1\r\nline2\r\n", "   leading spaces", "trailing spaces   ",
    "1234567 3.14159 2026-11-22 0x1F 1e-9 -42 100,000",
    "café naïve Zürich façade jalapeño Ærøskøbing",
    "中文测试：你好，世界！", "日本語のテキスト、カタカナ、ひらがな", "한국어 텍스트",
    "emoji 😀 🎉 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵", "Ünïcödé ∑∫√∞ ≠ ≤ ≥ → ←",
    "MiXeD CaSe WoRdS and ALLCAPS", "https://example.com/path?query=1&b=2#frag",
    "!!!??? ... --- *** ### @@@", "don't can't won't I'm you're they've we'll he'd",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", "<bos>text after bos",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "<|endoftext|>after eot", "<unk><pad><eos>", "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "x" * 50, "ab" * 30, "The quick brown fox jumps over the lazy dog. " * 3,
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}", "SELECT * FROM users WHERE id = 1;",
    "    indented code\n        more indented", "Ελληνικά кириллица עברית العربية हिन्दी",
]


def run_tokenize(bin_dir: Path, model: Path, text: str) -> list[int]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(text)
    out = subprocess.run([str(bin_dir / "llama-tokenize"), "-m", str(model), "-f", f.name, "--ids",
                          "--log-disable"], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cmd_tokenize(a):
    for name, file in MODELS.items():
        model = ROOT / "models" / "cache" / file
        cases = [{"text": t, "ids": run_tokenize(a.bin, model, t)} for t in TEXTS]
        (FIX / f"tokenize_{name}.json").write_text(json.dumps({
            "command": f"llama-tokenize -m {file} -f <text file> --ids --log-disable",
            "llama_cpp": "vendored in llama-cpp-python 0.3.36", "cases": cases}, ensure_ascii=False, indent=0))
        print(name, len(cases), "cases")


def cmd_perplexity(a):
    for name, file in MODELS.items():
        log = Path(a.logdir) / f"ppl_{name.split('-')[0].split('2')[0]}.log"
        txt = log.read_text()
        running = [float(x) for x in re.findall(r"\[\d+\](\d+\.\d+)", txt)]
        m = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", txt)
        (FIX / f"perplexity_{name}.json").write_text(json.dumps({
            "command": f"llama-perplexity -m {file} -f tests/fixtures/pride_ch1_15.txt -c 512 -b 512 -t 2 -fa off",
            "llama_cpp": "vendored in llama-cpp-python 0.3.36", "text_sha256":
            "af4bd0429e9719feed939abd0291baf0b29c31f1f70324f086d592e5bb2b4eb2",
            "ppl": float(m.group(1)), "ppl_err": float(m.group(2)), "running": running,
            "chunks": len(running)}, indent=0))
        print(name, m.group(1), len(running), "chunks")


def kld_top1(path: Path):
    """argmax and log-prob of the true next token per scored position, from a kld-base file."""
    import numpy as np
    n_ctx, n_vocab, tokens, data = read_kld_base(path)
    first = n_ctx // 2
    chunks = []
    for c in range(tokens.shape[0]):
        u = data[c, :, 4:4 + n_vocab]
        head = data[c, :, :4].copy().view(np.float32)          # (rows, 2): scale, min log-prob
        nxt = tokens[c, first + 1:]
        lp = head[:, 1] + head[:, 0] * u[np.arange(len(nxt)), nxt].astype(np.float32)
        chunks.append({"argmax": u.argmax(axis=1).tolist(), "logprob_next": [round(float(x), 4) for x in lp]})
    return n_ctx, first, chunks


def cmd_variants(a):
    """llama.cpp against itself: the same top1 command rerun with this build, -fa off and -fa on."""
    runs = {"rebuild_fa_off": ["-fa", "off"], "rebuild_fa_on": ["-fa", "on"]}
    for name, file in MODELS.items():
        fx = json.loads((FIX / f"top1_{name}.json").read_text())
        out = {}
        for tag, extra in runs.items():
            kld = Path(tempfile.mkdtemp()) / "kld.bin"
            subprocess.run([str(a.bin / "llama-perplexity"), "-m", str(ROOT / "models" / "cache" / file), "-f",
                            str(FIX / "pride_ch1_15.txt"), "-c", "512", "-b", "512", "-t", "2", *extra,
                            "--chunks", "4", "--kl-divergence-base", str(kld)], capture_output=True, check=True)
            out[tag] = [c["argmax"] for c in kld_top1(kld)[2]]
        fx["variants"] = out
        fx["variants_command"] = ("the command above rerun with a fresh GGML_NATIVE build of the same llama.cpp "
                                  "(tools/llamacpp_bench.py setup), -fa off and -fa on: python tools/llamacpp_fixtures.py variants")
        (FIX / f"top1_{name}.json").write_text(json.dumps(fx))
        print(name, {k: len(v) for k, v in out.items()})


GREEDY = {"gemma-3-270m": ["The capital of France is", "The capital of France is the city of",
                           "Question: What is the capital of France?\nAnswer:", "Paris is the capital of"],
          "qwen2.5-coder-0.5b": ["The capital of France is", "def fibonacci(n):"]}


def cmd_greedy(a):
    """llama-simple's greedy continuation (16 tokens) of a few prompts per model."""
    cases = {}
    for name, file in MODELS.items():
        cases[name] = []
        for p in GREEDY[name]:
            out = subprocess.run([str(a.bin / "llama-simple"), "-m", str(ROOT / "models" / "cache" / file), "-n", "16", p],
                                 capture_output=True, text=True, check=True).stdout
            cont = out.split(p, 1)[1]
            cases[name].append({"prompt": p, "continuation": cont})
    (FIX / "greedy_llama_cpp.json").write_text(json.dumps({
        "command": "llama-simple -m MODEL -n 16 PROMPT  (greedy sampler; text after the prompt)",
        "llama_cpp": "vendored in llama-cpp-python 0.3.36", "cases": cases}, ensure_ascii=False, indent=1))
    print({k: len(v) for k, v in cases.items()})


def read_kld_base(path: Path):
    """llama-perplexity --kl-divergence-base file: '_logits_', n_ctx, n_vocab, n_chunk (int32),
    tokens int32 (n_chunk*n_ctx), then per chunk n_ctx-1-n_ctx/2 rows of [f32 scale, f32 min
    log-prob, uint16 x n_vocab padded to even]; log p = min + scale * u."""
    import numpy as np
    b = path.read_bytes()
    assert b[:8] == b"_logits_"
    n_ctx, n_vocab, n_chunk = np.frombuffer(b, np.int32, 3, 8)
    tokens = np.frombuffer(b, np.int32, n_chunk * n_ctx, 20).reshape(n_chunk, n_ctx)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = n_ctx - 1 - n_ctx // 2
    data = np.frombuffer(b, np.uint16, n_chunk * rows * nv, 20 + 4 * n_chunk * n_ctx).reshape(n_chunk, rows, nv)
    return int(n_ctx), int(n_vocab), tokens, data


def cmd_top1(a):
    for name, short in (("gemma-3-270m", "gemma"), ("qwen2.5-coder-0.5b", "qwen")):
        n_ctx, first, chunks = kld_top1(Path(a.logdir) / f"kld_{short}.bin")
        (FIX / f"top1_{name}.json").write_text(json.dumps({
            "command": f"llama-perplexity -m {MODELS[name]} -f tests/fixtures/pride_ch1_15.txt -c 512 -b 512 -t 2 "
                       f"-fa off --chunks 4 --kl-divergence-base kld.bin; python tools/llamacpp_fixtures.py top1",
            "llama_cpp": "vendored in llama-cpp-python 0.3.36", "n_ctx": n_ctx, "first": first,
            "note": "argmax of llama.cpp's 16-bit quantized log-probs over the scored second half of each chunk",
            "chunks": chunks}))
        print(name, len(chunks), "chunks")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["tokenize", "perplexity", "top1", "variants", "greedy"])
    ap.add_argument("--bin", type=Path, default=Path("/tmp/llref/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"))
    ap.add_argument("--logdir", default="/tmp/llref")
    a = ap.parse_args()
    {"tokenize": cmd_tokenize, "perplexity": cmd_perplexity, "top1": cmd_top1, "variants": cmd_variants,
     "greedy": cmd_greedy}[a.what](a)
