"""Token ids equal llama.cpp's (fixtures made with llama-tokenize, see tools/llamacpp_fixtures.py);
streaming decode never splits a UTF-8 character."""
from __future__ import annotations

import json

import pytest

from conftest import FIXTURES, model_file
from svdq_edge.gguf_io import GGUFFile
from svdq_edge.model import cache_dir_for
from svdq_edge.tokenizer import StreamDecoder, Tokenizer

_tok = {}


def tokenizer(key):
    if key not in _tok:
        p = model_file(key)
        _tok[key] = Tokenizer.from_gguf(GGUFFile(p), cache_dir_for(p))
    return _tok[key]


FIXTURE = {"gemma": "tokenize_gemma-3-270m.json", "qwen": "tokenize_qwen2.5-coder-0.5b.json"}


def cases(key):
    return json.loads((FIXTURES / FIXTURE[key]).read_text())["cases"]


@pytest.mark.parametrize("key", ["gemma", "qwen"])
def test_ids_match_llama_cpp(key):
    tk = tokenizer(key)
    bad = [(c["text"], tk.encode(c["text"]), c["ids"]) for c in cases(key) if tk.encode(c["text"]) != c["ids"]]
    assert not bad, bad[:3]


@pytest.mark.parametrize("key", ["gemma", "qwen"])
def test_roundtrip_plain_text(key):
    tk = tokenizer(key)
    for c in cases(key):
        t = c["text"]
        if "<" in t:          # special tokens are not printed back
            continue
        assert tk.decode(tk.encode(t, add_bos=False)) == t


@pytest.mark.parametrize("key", ["gemma", "qwen"])
def test_stream_decoder_never_splits_characters(key):
    tk = tokenizer(key)
    text = "emoji 😀 🎉 👨‍👩‍👧 中文测试 café"
    dec = StreamDecoder(tk)
    pieces = [dec.feed(i) for i in tk.encode(text, add_bos=False)] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_special_tokens_and_eot():
    g, q = tokenizer("gemma"), tokenizer("qwen")
    assert g.id_of("<end_of_turn>") in g.eot_ids and q.id_of("<|im_end|>") in q.eot_ids
    assert g.encode("<start_of_turn>", add_bos=False) == [g.id_of("<start_of_turn>")]
    # parse_special=False keeps control tokens as text
    assert q.encode("<|im_end|>", parse_special=False) != [q.id_of("<|im_end|>")]
