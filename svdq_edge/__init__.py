"""svdq-edge: run GGUF language models from Python with an SVD-compressed K cache."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenBLAS's idle threads spin for about 2^28 cycles after each numpy matmul and take both cores
# from the OpenMP threads of the native kernels that run next: Gemma's 512-token prefill ran at
# 310 tok/s with them spinning and 587 tok/s with 2^4 (RESULTS.md §3.S16). OpenBLAS reads this
# once, when numpy loads it; kernels.quiet_blas() covers a numpy imported before svdq_edge.
BLAS_TIMEOUT_SET = "numpy" not in _sys.modules or "OPENBLAS_THREAD_TIMEOUT" in _os.environ
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


class SvdqError(Exception):
    """An error the user caused (bad file, bad flag, prompt too long): printed as one line."""


def load(model=None, **kw):
    """Load a model by path or registry name (pulled on first use); see svdq_edge.model.Model."""
    from .model import load as _load
    return _load(model, **kw)
