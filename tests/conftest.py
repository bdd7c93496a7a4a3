"""Shared fixtures: the two real models, pulled by the project's own `pull` on first use."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = {"gemma": "gemma-3-270m", "qwen": "qwen2.5-coder-0.5b"}


def model_file(key: str) -> Path:
    env = os.environ.get(f"SVDQ_EDGE_{key.upper()}")
    if env:
        return Path(env)
    from svdq_edge.pull import resolve
    return resolve(MODELS[key])


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    return model_file("gemma")


@pytest.fixture(scope="session")
def qwen_path() -> Path:
    return model_file("qwen")


_loaded = {}


def loaded(key: str, **kw):
    """One loaded Model per (model, options) for the whole session; tests reset() it."""
    from svdq_edge.model import Model
    k = (key, tuple(sorted(kw.items())))
    if k not in _loaded:
        _loaded[k] = Model(model_file(key), **kw)
    m = _loaded[k]
    m.reset()
    return m
