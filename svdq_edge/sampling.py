"""Sampling with llama.cpp's flag names, defaults and order:
penalties -> top-k -> top-p -> min-p -> temperature -> draw. Temperature 0 is argmax."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplerParams:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = -1            # -1: a random seed

    def validate(self) -> None:
        if self.temp < 0:
            raise ValueError(f"--temp {self.temp}: must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"--top-k {self.top_k}: must be >= 0 (0 disables)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"--top-p {self.top_p}: must be in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"--min-p {self.min_p}: must be in [0, 1]")
        if self.repeat_penalty <= 0:
            raise ValueError(f"--repeat-penalty {self.repeat_penalty}: must be > 0")
        if self.repeat_last_n < -1:
            raise ValueError(f"--repeat-last-n {self.repeat_last_n}: must be >= -1")


class Sampler:
    def __init__(self, params: SamplerParams):
        params.validate()
        self.p = params
        seed = params.seed if params.seed >= 0 else None
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, history: list[int]) -> int:
        """logits: float32 (n_vocab,), history: previous token ids -> next token id."""
        p = self.p
        if p.repeat_penalty != 1.0 and history:
            n = len(history) if p.repeat_last_n == -1 else p.repeat_last_n
            recent = np.unique(np.asarray(history[-n:], dtype=np.int64)) if n else np.empty(0, np.int64)
            if recent.size:
                logits = logits.copy()
                v = logits[recent]
                logits[recent] = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
        if p.temp <= 0.0:
            return int(np.argmax(logits))
        # candidates sorted by logit, cut by top-k
        k = p.top_k if 0 < p.top_k < logits.shape[0] else logits.shape[0]
        idx = np.argpartition(-logits, k - 1)[:k] if k < logits.shape[0] else np.arange(logits.shape[0])
        idx = idx[np.argsort(-logits[idx], kind="stable")]
        lg = logits[idx].astype(np.float64)
        probs = np.exp(lg - lg[0])
        probs /= probs.sum()
        # top-p: smallest prefix with mass >= top_p
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            idx, lg, probs = idx[:keep], lg[:keep], probs[:keep]
        # min-p: drop tokens below min_p times the best probability
        if p.min_p > 0.0:
            keep = max(1, int(np.sum(probs >= p.min_p * probs[0])))
            idx, lg = idx[:keep], lg[:keep]
        z = (lg - lg[0]) / p.temp
        w = np.exp(z)
        w /= w.sum()
        return int(idx[self.rng.choice(len(idx), p=w)])
