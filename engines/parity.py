"""An engine against the PyTorch oracle on the same inputs: max abs and relative error per output.

Used by the tests and by build.py's self-check. Relative error is the max abs error over the largest
magnitude of the oracle's output, so a near-zero element can't blow it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from runtime.backends.base import VisionEngine


@dataclass(frozen=True)
class OutputDiff:
    name: str
    shape: tuple[int, ...]
    expected_shape: tuple[int, ...]
    max_abs: float
    max_rel: float

    @property
    def same_shape(self) -> bool:
        return self.shape == self.expected_shape


@dataclass
class ParityReport:
    diffs: list[OutputDiff]

    @property
    def max_abs(self) -> float:
        return max((d.max_abs for d in self.diffs), default=0.0)

    def passed(self, atol: float) -> bool:
        return all(d.same_shape and d.max_abs <= atol for d in self.diffs)

    def __str__(self) -> str:
        lines = [f"{'output':<24} {'shape':<20} {'max abs':>10} {'max rel':>10}"]
        for d in self.diffs:
            shape = "x".join(map(str, d.shape)) if d.same_shape else f"{d.shape} != {d.expected_shape}"
            lines.append(f"{d.name:<24} {shape:<20} {d.max_abs:>10.2e} {d.max_rel:>10.2e}")
        return "\n".join(lines)


def compare(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> ParityReport:
    """Per output name (both sides must have the same names): shapes and errors."""
    if set(actual) != set(expected):
        raise ValueError(f"outputs differ: {sorted(actual)} vs {sorted(expected)}")
    diffs = []
    for name, want in expected.items():
        got = np.asarray(actual[name], dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            diffs.append(OutputDiff(name, got.shape, want.shape, float("inf"), float("inf")))
            continue
        err = float(np.abs(got - want).max(initial=0.0))
        scale = float(np.abs(want).max(initial=0.0))
        diffs.append(OutputDiff(name, got.shape, want.shape, err, err / scale if scale else err))
    return ParityReport(diffs)


def vision_parity(reference: VisionEngine, engine: VisionEngine, inputs: Iterable[np.ndarray],
                  names: Sequence[str] | None = None) -> ParityReport:
    """Each input through the engine and the reference (the PyTorch model's engine, models/engines.py); one
    report row per input."""
    actual, expected = {}, {}
    for i, pixels in enumerate(inputs):
        name = names[i] if names else f"image_embeds[{i}]"
        actual[name] = engine.encode(pixels)
        expected[name] = reference.encode(pixels)
    return compare(actual, expected)
