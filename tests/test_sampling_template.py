"""Sampler semantics (llama.cpp order and defaults) and sandboxed chat templates."""
from __future__ import annotations

import numpy as np
import pytest

from svdq_edge import SvdqError
from svdq_edge.chat_template import GEMMA_TEMPLATE, ChatTemplate, pick_template
from svdq_edge.sampling import Sampler, SamplerParams


def test_greedy_is_argmax():
    rng = np.random.default_rng(0)
    lg = rng.standard_normal(1000).astype(np.float32)
    assert Sampler(SamplerParams(temp=0))(lg, []) == int(np.argmax(lg))


def test_repeat_penalty_changes_greedy_choice():
    lg = np.array([5.0, 4.9, 1.0], np.float32)
    assert Sampler(SamplerParams(temp=0, repeat_penalty=1.1))(lg, [0]) == 1
    assert Sampler(SamplerParams(temp=0, repeat_penalty=1.0))(lg, [0]) == 0


def test_top_k_one_and_min_p_cut():
    rng = np.random.default_rng(1)
    lg = rng.standard_normal(500).astype(np.float32)
    s = Sampler(SamplerParams(temp=1.0, top_k=1, seed=3))
    assert all(s(lg, []) == int(np.argmax(lg)) for _ in range(20))
    # min-p 0.5: only tokens with p >= 0.5 * p_max survive
    lg2 = np.array([0.0, -0.5, -3.0, -4.0], np.float32)
    s2 = Sampler(SamplerParams(temp=1.0, top_k=0, top_p=1.0, min_p=0.5, seed=0))
    assert {s2(lg2, []) for _ in range(200)} == {0, 1}


def test_top_p_distribution_matches():
    lg = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(SamplerParams(temp=1.0, top_k=0, top_p=0.75, min_p=0.0, seed=42))
    draws = np.bincount([s(lg, []) for _ in range(4000)], minlength=4)
    assert draws[2] == draws[3] == 0            # cut by top-p (0.5 + 0.3 >= 0.75)
    assert abs(draws[0] / 4000 - 0.625) < 0.03  # renormalized 0.5 / 0.8


def test_seeded_is_deterministic():
    lg = np.random.default_rng(2).standard_normal(300).astype(np.float32)
    a = [Sampler(SamplerParams(seed=7))(lg, []) for _ in range(3)]
    assert len(set(a)) == 1


@pytest.mark.parametrize("bad", [dict(temp=-1), dict(top_p=0), dict(min_p=2), dict(top_k=-3)])
def test_bad_params(bad):
    with pytest.raises(ValueError):
        SamplerParams(**bad).validate()


def test_gemma_builtin_template():
    t = ChatTemplate(GEMMA_TEMPLATE, "<bos>", "<eos>")
    s = t.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}])
    assert s == ("<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n"
                 "Hello!<end_of_turn>\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n")


def test_template_is_sandboxed():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(SvdqError, match="chat template"):
        ChatTemplate(evil).render([{"role": "user", "content": "x"}])


def test_template_raise_exception_is_an_error():
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(SvdqError, match="roles must alternate"):
        t.render([])


def test_template_file_override(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    t = pick_template("ignored", "llama", lambda p: False, "", "", str(f))
    assert t.render([{"role": "user", "content": "yo"}]) == "[user]yo"
    with pytest.raises(SvdqError, match="--chat-template-file"):
        pick_template(None, "llama", lambda p: False, "", "", str(tmp_path / "missing.jinja"))
