"""svdq-edge: run GGUF language models from Python with an SVD-compressed K cache."""

__version__ = "0.1.0"


class SvdqError(Exception):
    """An error the user caused (bad file, bad flag, prompt too long): printed as one line."""
