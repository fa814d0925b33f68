"""build.py's self-check: the built engine's Pipeline against a Pipeline on the PyTorch engines (models/engines.py)
— the same preprocessing, template, tokenizer and generation loop, only the engines differ. The PyTorch side
answers first, while the model is loaded; the engine answers after the build, once the model is gone, so a build
never holds both.

A float engine must give the same prompt ids and, token for token, the same greedy answers; its logits at every
step and its vision rows for the sample image are reported against PyTorch's, absolutely and relative to their
scale. (A quantized engine is judged by its accuracy instead: quant/report.py, the same two Pipelines.)

build.py checks the engine in a process of its own, as the runtime runs it: without PyTorch, so the build needs
no more memory than the engine itself (`python -m engines.selfcheck ENGINE REFERENCE.npz TOKENS`).

The sample image is drawn here, the same pixels on every machine: shapes of known colours on a non-square
canvas, so EVE pads it, Eagle2/2.5 tile it and Eagle v1 squares it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from runtime.errors import AerieError
from runtime.manifest import read_manifest
from runtime.pipeline import Pipeline
from runtime.preprocess import max_image_tokens, preprocess_image
from runtime.sampling import SamplingParams

from .parity import OutputDiff, compare

PROMPTS = ("What colour is the shape?", "How many shapes are there?")
TEXT_ONLY_PROMPT = "Answer the question using a single word or phrase. What is two plus two?"
EXIT_DIFFERS = 6  # the engine-side process's exit code when the engine differs from PyTorch
TEXT_ROOM = 256  # positions for a prompt's template and words around its image


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
class CaseAnswer:
    """One case's greedy answer: the prompt as ids, the tokens, the logits each token was chosen from."""

    prompt_ids: np.ndarray
    token_ids: list[int]
    logits: np.ndarray


@dataclass
class Reference:
    """The PyTorch pipeline's greedy answers to every case and its vision rows for the sample image."""

    answers: list[CaseAnswer]
    vision_rows: np.ndarray

    def save(self, path: Path) -> None:
        arrays = {"vision_rows": self.vision_rows}
        for i, a in enumerate(self.answers):
            arrays |= {f"prompt_ids_{i}": a.prompt_ids, f"tokens_{i}": np.asarray(a.token_ids, np.int64),
                       f"logits_{i}": a.logits}
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Reference":
        with np.load(path) as f:
            answers = [CaseAnswer(f[f"prompt_ids_{i}"], f[f"tokens_{i}"].tolist(), f[f"logits_{i}"])
                       for i in range(len(CASES))]
            return cls(answers, f["vision_rows"])


def sample_rows(pipe: Pipeline) -> np.ndarray:
    return pipe.vision.encode(preprocess_image(sample_image(), pipe.spec).trimmed())


def answer_cases(pipe: Pipeline, max_new_tokens: int) -> list[CaseAnswer]:
    answers = pipe.run_batch([c.prompt for c in CASES], [c.images() for c in CASES],
                             SamplingParams(max_new_tokens=max_new_tokens), logits=True)
    return [CaseAnswer(a.prompt_ids, a.token_ids, a.logits) for a in answers]


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SelfCheck":
        def diff(x: dict) -> OutputDiff:
            return OutputDiff(x["name"], tuple(x["shape"]), tuple(x["expected_shape"]), x["max_abs"], x["max_rel"])

        return cls(d["prompts"], d["with_image"], d["tokens"], diff(d["logits"]), diff(d["vision"]))


def describe(diff: OutputDiff) -> str:
    """An error absolute and relative to the values' largest magnitude: '2.1e-05 (1.3e-06 of their scale)'."""
    return f"{diff.max_abs:.1e} ({diff.max_rel:.1e} of their scale)"


def check_engine(engine_dir: Path, expected: Reference, max_new_tokens: int) -> SelfCheck:
    """The engine's prompt ids must equal PyTorch's and its greedy answers too, token for token; the logits
    of the steps both took and the sample image's vision rows are measured. Raises SelfCheckError."""
    # The prompts are one image and a sentence: a KV buffer for the whole context (Qwen2.5's 32k positions, 3
    # slots) would be most of the self-check's memory.
    context = max_image_tokens(read_manifest(engine_dir).preprocess_spec()) + TEXT_ROOM + max_new_tokens
    pipe = Pipeline(engine_dir, max_batch=len(CASES), max_length=context)
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


def check_engine_apart(engine_dir: Path, expected: Reference, max_new_tokens: int) -> SelfCheck:
    """check_engine in a process of its own (no PyTorch in it: the engine's memory is all it holds)."""
    with tempfile.TemporaryDirectory(prefix=".aerie-selfcheck-", dir=engine_dir.parent) as tmp:
        path = Path(tmp) / "reference.npz"
        expected.save(path)
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-m", "engines.selfcheck", str(engine_dir), str(path), str(max_new_tokens)],
                              capture_output=True, text=True, env=env)
    if done.returncode == 0:
        return SelfCheck.from_dict(json.loads(done.stdout.strip().splitlines()[-1]))
    lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
    if done.returncode == EXIT_DIFFERS:
        raise SelfCheckError(lines[-1])
    raise AerieError(f"the self-check process failed: {lines[-1]}")


def main(argv: list[str] | None = None) -> int:
    """`python -m engines.selfcheck ENGINE REFERENCE.npz TOKENS`: prints the SelfCheck as JSON, or the difference
    on stderr with exit code 6."""
    engine_dir, reference, tokens = (argv if argv is not None else sys.argv[1:])
    try:
        result = check_engine(Path(engine_dir), Reference.load(Path(reference)), int(tokens))
    except SelfCheckError as e:
        print(e, file=sys.stderr)
        return EXIT_DIFFERS
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
