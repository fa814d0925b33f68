"""build.py's self-check: the built engine's Pipeline against a Pipeline on the PyTorch engines (models/engines.py)
— the same preprocessing, template, tokenizer and generation loop, only the engines differ. The PyTorch side
answers first, while the model is loaded; the engine answers after the build, once the model is gone, so a build
never holds both.

A float engine must give the same prompt ids and, token for token, the same greedy answers; its logits at every
step and its vision rows for the sample image are reported against PyTorch's, absolutely and relative to their
scale. (A quantized engine is judged by its accuracy instead: quant/report.py, the same two Pipelines.)

The sample image is drawn here, the same pixels on every machine: shapes of known colours on a non-square
canvas, so EVE pads it, Eagle2/2.5 tile it and Eagle v1 squares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from runtime.errors import AerieError
from runtime.pipeline import Answer, Pipeline
from runtime.preprocess import preprocess_image
from runtime.sampling import SamplingParams

from .parity import OutputDiff, compare

PROMPTS = ("What colour is the shape?", "How many shapes are there?")
TEXT_ONLY_PROMPT = "Answer the question using a single word or phrase. What is two plus two?"


class SelfCheckError(AerieError):
    """The engine's answers differ from the PyTorch model's."""


def sample_image() -> Image.Image:
    image = Image.new("RGB", (320, 208), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse((24, 40, 124, 140), fill=(220, 30, 30))
    draw.rectangle((170, 60, 290, 170), fill=(30, 60, 220))
    draw.polygon([(140, 190), (160, 150), (180, 190)], fill=(20, 160, 60))
    return image


@dataclass(frozen=True)
class Case:
    prompt: str
    with_image: bool

    def images(self) -> list[Image.Image]:
        return [sample_image()] if self.with_image else []


CASES = tuple(Case(p, True) for p in PROMPTS) + (Case(TEXT_ONLY_PROMPT, False),)


@dataclass
class Reference:
    """The PyTorch pipeline's greedy answers to every case (prompt ids, tokens, logits of every step) and its
    vision rows for the sample image."""

    answers: list[Answer]
    vision_rows: np.ndarray


def sample_rows(pipe: Pipeline) -> np.ndarray:
    return pipe.vision.encode(preprocess_image(sample_image(), pipe.spec).trimmed())


def answer_cases(pipe: Pipeline, max_new_tokens: int) -> list[Answer]:
    return pipe.run_batch([c.prompt for c in CASES], [c.images() for c in CASES],
                          SamplingParams(max_new_tokens=max_new_tokens), logits=True)


def reference_answers(reference: Pipeline, max_new_tokens: int) -> Reference:
    return Reference(answer_cases(reference, max_new_tokens), sample_rows(reference))


@dataclass
class SelfCheck:
    prompts: int
    with_image: int
    tokens: int
    logits: OutputDiff
    vision: OutputDiff

    def summary(self) -> str:
        return (f"{self.prompts} prompts ({self.with_image} with the sample image): all {self.tokens} greedy tokens "
                f"equal PyTorch's; max error: logits {describe(self.logits)}, vision rows {describe(self.vision)}")


def describe(diff: OutputDiff) -> str:
    """An error absolute and relative to the values' largest magnitude: '2.1e-05 (1.3e-06 of their scale)'."""
    return f"{diff.max_abs:.1e} ({diff.max_rel:.1e} of their scale)"


def check_engine(engine_dir: Path, expected: Reference, max_new_tokens: int) -> SelfCheck:
    """The engine's prompt ids must equal PyTorch's and its greedy answers too, token for token; the logits
    of the steps both took and the sample image's vision rows are measured. Raises SelfCheckError."""
    pipe = Pipeline(engine_dir, max_batch=len(CASES))
    answers = answer_cases(pipe, max_new_tokens)
    got_logits, want_logits = [], []
    for case, answer, want in zip(CASES, answers, expected.answers):
        where = f"for {case.prompt!r}{' with the sample image' if case.with_image else ''}"
        if not np.array_equal(answer.prompt_ids, want.prompt_ids):
            raise SelfCheckError(f"self-check failed: the engine's prompt ids {where} differ from PyTorch's "
                                 "(tokenizer, template or image-token layout); the engine is wrong, do not use it")
        same = min(len(answer.logits), len(want.logits))
        got_logits.append(answer.logits[:same])
        want_logits.append(want.logits[:same])
        if answer.token_ids != want.token_ids:
            at = next((i for i, (a, b) in enumerate(zip(answer.token_ids, want.token_ids)) if a != b),
                      min(len(answer.token_ids), len(want.token_ids)))
            error = float(np.abs(answer.logits[: at + 1] - want.logits[: at + 1]).max())
            raise SelfCheckError(
                f"self-check failed: {where} the engine's greedy tokens differ from PyTorch's at position {at} (engine "
                f"{answer.token_ids[at:at + 5]}, PyTorch {want.token_ids[at:at + 5]}; logits max abs error up to "
                f"there {error:.1e}); the engine is wrong, do not use it")
    logits = compare({"logits": np.concatenate(got_logits)}, {"logits": np.concatenate(want_logits)}).diffs[0]
    vision = compare({"vision rows": sample_rows(pipe)}, {"vision rows": expected.vision_rows}).diffs[0]
    return SelfCheck(len(CASES), sum(c.with_image for c in CASES), sum(len(a.token_ids) for a in answers),
                     logits, vision)
