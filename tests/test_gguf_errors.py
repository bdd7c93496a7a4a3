"""Malformed files and bad flags give one clear line and exit code 1, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFWriter, GGMLQuantizationType

from svdq_edge import SvdqError
from svdq_edge.config import args_from_gguf
from svdq_edge.gguf_io import GGUFFile


def tiny_gguf(path, arch="llama", n_embd=64, n_head=4, n_kv=2, n_layer=1, n_ff=128, vocab=32,
              bad_shape=False, qtype=None):
    """A structurally valid tiny llama-family GGUF (random weights) for loader/error tests."""
    w = GGUFWriter(str(path), arch)
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    rng = np.random.default_rng(0)
    hd = n_embd // n_head

    def t(name, shape):
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    t("token_embd.weight", (vocab, n_embd))
    t("output_norm.weight", (n_embd,))
    for i in range(n_layer):
        p = f"blk.{i}."
        t(p + "attn_norm.weight", (n_embd,))
        t(p + "attn_q.weight", (n_embd, n_embd))
        t(p + "attn_k.weight", (n_kv * hd + (8 if bad_shape else 0), n_embd))
        t(p + "attn_v.weight", (n_kv * hd, n_embd))
        t(p + "attn_output.weight", (n_embd, n_embd))
        t(p + "ffn_norm.weight", (n_embd,))
        t(p + "ffn_gate.weight", (n_ff, n_embd))
        t(p + "ffn_up.weight", (n_ff, n_embd))
        t(p + "ffn_down.weight", (n_embd, n_ff))
    if qtype is not None:
        # an odd tensor type (raw bytes declared as that type)
        w.add_tensor("blk.0.extra", np.zeros((4, 66), np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _load(path):
    from svdq_edge.arch.transformer import load_weights
    g = GGUFFile(path)
    a = args_from_gguf(g)
    load_weights(g, a)
    return g, a


def test_tiny_gguf_loads(tmp_path):
    g, a = _load(tiny_gguf(tmp_path / "ok.gguf"))
    assert a.arch == "llama" and a.n_kv == 2 and a.head_dim == 16


def test_wrong_magic(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGML" + b"\0" * 100)
    with pytest.raises(SvdqError, match="not a GGUF file"):
        GGUFFile(p)


def test_empty_and_directory(tmp_path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    with pytest.raises(SvdqError, match="not a GGUF file"):
        GGUFFile(p)
    with pytest.raises(SvdqError, match="directory"):
        GGUFFile(tmp_path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated(tmp_path, keep):
    src = tiny_gguf(tmp_path / "ok.gguf")
    data = src.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SvdqError, match="truncated|malformed|past the end|missing"):
        _load(p)


def test_unknown_arch(tmp_path):
    with pytest.raises(SvdqError, match="architecture 'mamba' is not supported"):
        _load(tiny_gguf(tmp_path / "m.gguf", arch="mamba"))


def test_inconsistent_shapes(tmp_path):
    with pytest.raises(SvdqError, match="attn_k.weight has shape"):
        _load(tiny_gguf(tmp_path / "s.gguf", bad_shape=True))


def test_unsupported_type_named(tmp_path):
    from svdq_edge.kernels import QWeight  # noqa: F401  (the error comes from GGUFFile.weight)
    g = GGUFFile(tiny_gguf(tmp_path / "q.gguf", qtype=GGMLQuantizationType.IQ2_XXS))
    with pytest.raises(SvdqError, match="unsupported type IQ2_XXS"):
        g.weight("blk.0.extra", (4, 256))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "svdq_edge.cli", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("make", ["magic", "truncated", "arch"])
def test_cli_one_line_error(tmp_path, make):
    p = tmp_path / "x.gguf"
    if make == "magic":
        p.write_bytes(b"NOPE" * 10)
    elif make == "truncated":
        d = tiny_gguf(tmp_path / "ok.gguf").read_bytes()
        p.write_bytes(d[: len(d) // 2])
    else:
        tiny_gguf(p, arch="mamba")
    r = _cli("run", "-m", str(p), "-p", "hi", "-n", "1")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("svdq-edge: error:") and str(p) in lines[0]


@pytest.mark.parametrize("argv", [["run", "--temp", "abc"], ["run", "--top-p", "2", "-p", "x"],
                                  ["bench", "-ctk", "q3_z"], ["nosuchcmd"], ["run", "-m", "/no/such.gguf", "-p", "x"]])
def test_cli_bad_flags(argv):
    r = _cli(*argv)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "error" in r.stderr


def test_long_string_arrays_stay_in_the_mapping(tmp_path):
    """A vocabulary-sized string array comes back as a StringTable over the file: every item, slices
    and index_of (first match, equal-length candidates only) as the written list gives them; a
    short array stays a list; cut inside the table, the file is refused in one line."""
    from svdq_edge.gguf_io import TABLE_MIN, StringTable
    rng = np.random.default_rng(1)
    alphabet = list("abcé▁<>|\u4e2d ")
    pieces = ["".join(rng.choice(alphabet, rng.integers(0, 7))) for _ in range(TABLE_MIN + 37)]
    pieces[5] = pieces[900] = "<|im_end|>"                       # a duplicate: index_of gives the first
    w = GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    w.add_array("tok.long", pieces)
    w.add_array("tok.short", pieces[:10])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = GGUFFile(tmp_path / "v.gguf")
    t = g.fields["tok.long"]
    assert isinstance(t, StringTable) and isinstance(g.fields["tok.short"], list)
    assert len(t) == len(pieces) and list(t) == pieces and t[-1] == pieces[-1] and t[3:9] == pieces[3:9]
    assert g.fields["tok.short"] == pieces[:10]
    for p in ["<|im_end|>", pieces[17], pieces[-1], "", "not there", "abc" * 5]:
        want = pieces.index(p) if p in pieces else None
        assert t.index_of(p) == want, p
    with pytest.raises(IndexError):
        t[len(pieces)]
    data = (tmp_path / "v.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:len(data) // 2])
    with pytest.raises(SvdqError):
        GGUFFile(tmp_path / "cut.gguf")
