"""Next-token choice in numpy: greedy, temperature, top-k, top-p, repetition penalty, seeded.

The same function picks tokens for every engine and for the PyTorch oracle, so the same logits and
the same seed give the same token everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no limit
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # extra stop strings; the template's and EOS always stop

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0 (leave it out for a random one), got {self.seed}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_stop(self, stop: Sequence[str]) -> "SamplingParams":
        return replace(self, stop=tuple(dict.fromkeys((*self.stop, *stop))))


def penalize_repetition(logits: np.ndarray, seen_ids: np.ndarray, penalty: float) -> np.ndarray:
    """Hugging Face's rule: a seen token's logit is divided by `penalty` if positive, multiplied if negative."""
    if penalty == 1.0 or seen_ids.size == 0:
        return logits
    ids = np.unique(seen_ids[(seen_ids >= 0) & (seen_ids < logits.shape[-1])])
    out = logits.copy()
    picked = out[ids]
    out[ids] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator | None,
                 seen_ids: np.ndarray | None = None) -> int:
    """Pick the next token from one row of logits [vocab]."""
    logits = np.asarray(logits, dtype=np.float32)
    if seen_ids is not None:
        logits = penalize_repetition(logits, seen_ids, params.repetition_penalty)
    if params.greedy:
        return int(np.argmax(logits))
    if rng is None:
        raise ValueError("sampling needs a random generator; pass one made from the request's seed")
    scaled = logits.astype(np.float64) / params.temperature
    order = np.argsort(-scaled, kind="stable")
    if params.top_k:
        order = order[: params.top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if params.top_p < 1.0:
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(len(order), p=probs)])


def make_rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)
