"""svdq-edge: run GGUF language models from Python with an SVD-compressed K cache."""

__version__ = "0.1.0"


class SvdqError(Exception):
    """An error the user caused (bad file, bad flag, prompt too long): printed as one line."""


def load(model=None, **kw):
    """Load a model by path or registry name (pulled on first use); see svdq_edge.model.Model."""
    from .model import load as _load
    return _load(model, **kw)
