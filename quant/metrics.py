"""How far a quantized engine's next-token distributions are from fp32's, on the fp32 answer: both engines
read the same prompt, then the fp32 greedy tokens one by one (teacher forcing), and at every position we
compare the top token (agreement) and the whole distribution (KL(fp32 || quantized), in nats)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from runtime.backends.base import DecoderEngine


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(reference_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) || softmax(logits)) per row, in nats."""
    p_log, q_log = log_softmax(reference_logits), log_softmax(logits)
    return (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)


@dataclass
class Agreement:
    positions: int = 0
    agreeing: int = 0
    kl_sum: float = 0.0
    kl_max: float = 0.0

    def add(self, reference_logits: np.ndarray, logits: np.ndarray) -> None:
        kl = kl_divergence(reference_logits, logits)
        self.positions += len(kl)
        self.agreeing += int((reference_logits.argmax(-1) == logits.argmax(-1)).sum())
        self.kl_sum += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max()))

    def to_dict(self) -> dict:
        n = max(self.positions, 1)
        return {"positions": self.positions, "token_agreement": self.agreeing / n, "mean_kl": self.kl_sum / n,
                "max_kl": self.kl_max}


def forced_logits(engine: DecoderEngine, ids: np.ndarray, table: np.ndarray | None, tokens: Sequence[int]) -> np.ndarray:
    """The logits of the prompt's last position and of each of `tokens` fed back (teacher forcing)."""
    logits = [engine.prefill(0, ids, table)]
    logits += [engine.decode([0], np.array([t]))[0] for t in tokens]
    engine.release(0)
    return np.stack(logits)


def decode_speed(engine: DecoderEngine, prompt_tokens: int = 32, new_tokens: int = 32, repeats: int = 3) -> dict:
    """Prefill time of a `prompt_tokens` text prompt and decode tokens per second over `new_tokens` greedy
    steps; the best of `repeats` runs (the machine is shared, the best run is the engine's own speed)."""
    import time

    ids = (np.arange(prompt_tokens) * 7 + 3) % engine.vocab_size
    best_prefill, best_decode = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        logits = engine.prefill(0, ids, None)
        prefilled = time.perf_counter()
        for _ in range(new_tokens):
            logits = engine.decode([0], np.array([int(logits.argmax())]))[0]
        best_prefill = min(best_prefill, prefilled - start)
        best_decode = min(best_decode, time.perf_counter() - prefilled)
        engine.release(0)
    return {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "prefill_s": round(best_prefill, 4),
            "decode_tokens_per_s": round(new_tokens / best_decode, 1)}
