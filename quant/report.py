"""The accuracy report of a quantized build and the gate that fails a build which lost too much: the built
engine's Pipeline (or, for what no CPU engine executes, the quantized checkpoint computed in PyTorch) against a
Pipeline on the PyTorch model in float32 — the self-check of a quantized engine, the same comparison as a float
engine's (engines/selfcheck.py) judged by accuracy instead of identical tokens.

Scored in two phases so a build never holds the model and the engine at once: `score_torch` answers with the
PyTorch rows while the model is loaded; `score_engine` opens the engine once the model is gone and scores every
row (the PyTorch rows resume from their answer files). Written into the engine directory as
quantization/report/report.{json,md} beside the evaluation runner's comparison.{md,png,json}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.eval.benchmarks import Score, get_benchmark
from runtime.eval.compare import compare_backends
from runtime.eval.predictors import PipelinePredictor, Request
from runtime.eval.runner import greedy
from runtime.pipeline import Pipeline
from runtime.sampling import SamplingParams

from .errors import AccuracyDropError
from .metrics import Agreement, decode_speed, forced_logits


@dataclass
class Row:
    """One way of running the model: its benchmark score and, against fp32, how its distributions differ."""

    name: str
    description: str
    score: Score
    agreement: dict | None = None  # metrics.Agreement.to_dict()
    speed: dict | None = None  # metrics.decode_speed()
    size_bytes: int | None = None  # the decoder's files for this backend

    def accuracy(self) -> dict[str, float]:
        return self.score.by_category()


@dataclass
class Gate:
    row: str
    reference: float  # overall accuracy, fraction
    value: float
    max_drop_points: float
    accepted: bool = False

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.reference - self.value)

    @property
    def passed(self) -> bool:
        return self.drop_points <= self.max_drop_points

    def to_dict(self) -> dict:
        return {"row": self.row, "reference_accuracy": self.reference, "accuracy": self.value,
                "drop_points": round(self.drop_points, 3), "max_drop_points": self.max_drop_points,
                "passed": self.passed, "accepted": self.accepted}

    def check(self) -> None:
        """AccuracyDropError when the drop is over the limit and the user didn't accept it."""
        if self.passed or self.accepted:
            return
        raise AccuracyDropError(
            f"{self.row} lost {self.drop_points:.1f} points of accuracy against fp32 ({100 * self.value:.1f}% vs "
            f"{100 * self.reference:.1f}%), more than the {self.max_drop_points:g} allowed; pass --accept-accuracy-drop "
            "to keep this engine anyway, raise --max-accuracy-drop, or calibrate on more or better data "
            "(--calib-data, --calib-samples)")


@dataclass
class Report:
    mode: str
    benchmark: dict  # name, data, questions
    rows: list[Row]
    gate: Gate
    calibration: dict = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode, "benchmark": self.benchmark, "calibration": self.calibration,
            "rows": {r.name: {"description": r.description, "accuracy": r.accuracy(),
                              "drop_points": round(100 * (self.rows[0].accuracy()["overall"] - r.accuracy()["overall"]), 3),
                              "agreement": r.agreement, "speed": r.speed, "size_bytes": r.size_bytes}
                     for r in self.rows},
            "sizes": self.sizes, "artifacts": self.artifacts, "gate": self.gate.to_dict(),
        }

    def table(self) -> str:
        """Markdown: per row the overall accuracy and its change, agreement, KL, decode speed and size."""
        reference = self.rows[0].accuracy()["overall"]
        lines = ["| backend | accuracy (%) | Δ points | token agreement (%) | mean KL (nats) | decode tok/s | decoder size |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            overall = r.accuracy()["overall"]
            delta = "–" if r is self.rows[0] else f"{100 * (overall - reference):+.1f}"
            agree = f"{100 * r.agreement['token_agreement']:.1f}" if r.agreement else "–"
            kl = f"{r.agreement['mean_kl']:.2e}" if r.agreement else "–"
            speed = f"{r.speed['decode_tokens_per_s']:.0f}" if r.speed else "–"
            size = f"{r.size_bytes / 1e6:.1f} MB" if r.size_bytes else "–"
            lines.append(f"| {r.name} | {100 * overall:.1f} | {delta} | {agree} | {kl} | {speed} | {size} |")
        return "\n".join(lines) + "\n"

    def markdown(self, comparison: str) -> str:
        gate = self.gate
        verdict = ("passed" if gate.passed else "ACCEPTED by --accept-accuracy-drop" if gate.accepted else "FAILED")
        lines = [
            f"# Quantization report: {self.mode}", "",
            f"{self.benchmark['name']} ({self.benchmark['questions']} questions from {self.benchmark['data']}); "
            f"calibration: {self.calibration.get('samples')} samples, {self.calibration.get('image_tokens')} image "
            f"tokens of {self.calibration.get('tokens')}, from {self.calibration.get('data')}", "",
            self.table(),
            "Descriptions: " + "; ".join(f"**{r.name}**: {r.description}" for r in self.rows), "",
            f"Gate: {gate.row} dropped {gate.drop_points:.1f} points (limit {gate.max_drop_points:g}): {verdict}.", "",
            "## Per category", "", comparison,
            "## Files", "", *(f"- {name}: `{path}` ({self.sizes.get(name, 0) / 1e6:.2f} MB)"
                               for name, path in self.artifacts.items()), "",
        ]
        return "\n".join(lines)

    def write(self, directory: str | Path, comparison: str) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, md_path = directory / "report.json", directory / "report.md"
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        md_path.write_text(self.markdown(comparison), encoding="utf-8")
        return [json_path, md_path]


BENCHMARK = "synthetic"
SMALL_MODEL = 100_000_000  # parameters: below, the whole test split is cheap on a CPU
LARGE_MODEL = 1_000_000_000  # from here, PyTorch's answer to one question with an image takes half a minute or more on a CPU


def default_questions(parameters: int) -> tuple[int | None, int]:
    """(accuracy questions, agreement questions) the report uses unless told: the whole 900-question test split
    for small models; 5 per category (45) and 8 below 1B parameters, where PyTorch takes seconds a question on a
    CPU; 2 per category (18) and 4 from 1B (pass --eval-limit 900 for the whole split)."""
    if parameters < SMALL_MODEL:
        return None, 32
    return (45, 8) if parameters < LARGE_MODEL else (18, 4)


@dataclass(frozen=True)
class ReportOptions:
    eval_data: Path  # synthetic-benchmark JSON
    eval_images: Path | None = None
    eval_limit: int | None = None
    metric_questions: int = 32  # questions for token agreement and KL
    metric_tokens: int = 16
    max_drop_points: float = 2.0
    accept_drop: bool = False
    progress: bool = True


class FinishedRow:
    """A row scored in the first phase: its answers are all in its answers file, so it is never asked again."""

    def __init__(self, name: str):
        self.name = name

    def answer(self, requests, params: SamplingParams) -> list[str]:
        raise AssertionError(f"{self.name}: its answers were expected to be on file already")


@dataclass
class Candidate:
    """A row before it is scored: the Pipeline that answers, and how to describe it."""

    name: str
    description: str
    pipeline: Pipeline
    size: int | None = None
    speed: dict | None = None


class AccuracyReport:
    """The rows of a quantized build, scored on the synthetic benchmark against the first (the fp32 reference)."""

    def __init__(self, mode: str, directory: Path, options: ReportOptions, calibration: dict, sizes: dict[str, int],
                 artifacts: dict[str, str]):
        self.mode, self.directory, self.options = mode, directory, options
        self.calibration, self.sizes, self.artifacts = calibration, sizes, artifacts
        self.bench = get_benchmark(BENCHMARK)
        questions = self.bench.read(options.eval_data, options.eval_images)[: options.metric_questions]
        self.requests = [Request(q.text, (q.image,) if q.image else ()) for q in questions]
        self.rows: list[tuple[str, str, dict | None, dict | None, int | None]] = []  # name, description, agreement, speed, size
        self.reference: list[tuple[list[int], np.ndarray]] = []  # the reference's greedy tokens and logits

    def compare(self, predictors: list) -> dict[str, Score]:
        o = self.options
        return compare_backends(predictors, BENCHMARK, o.eval_data, self.directory, images=o.eval_images,
                                limit=o.eval_limit, params=greedy(self.bench.max_new_tokens), progress=o.progress)

    def agreement(self, pipeline: Pipeline) -> dict:
        """Teacher-forced token agreement and KL of `pipeline` against the reference on its greedy answers."""
        result = Agreement()
        for request, (tokens, logits) in zip(self.requests, self.reference):
            prepared = pipeline.prepare(request.prompt, request.images).request
            # One row per token the reference chose (its answer's, then the EOS if it stopped on one).
            fed = tokens[: len(logits) - 1]
            result.add(logits, forced_logits(pipeline.decoder, prepared.input_ids, prepared.image_table, fed))
        return result.to_dict()

    def score_torch(self, reference: Candidate, others: Sequence[Candidate]) -> None:
        """Phase one, while the model is loaded: the reference row and the other PyTorch rows."""
        params = greedy(self.options.metric_tokens)
        for request in self.requests:
            answer = reference.pipeline.run(request.prompt, request.images, params, logits=True)
            self.reference.append((answer.token_ids, answer.logits))
        self.compare([PipelinePredictor(c.name, c.pipeline) for c in (reference, *others)])
        self.rows.append((reference.name, reference.description, None, reference.speed, reference.size))
        for c in others:
            self.rows.append((c.name, c.description, self.agreement(c.pipeline), c.speed, c.size))

    def score_engine(self, engine: Candidate | None, gate_row: str) -> "Report":
        """Phase two, once the model is gone: the engine's row (None when no engine here executes the
        quantization), then the report of every row, written, with its gate."""
        predictors: list = [FinishedRow(name) for name, *_ in self.rows]
        if engine is not None:
            engine.speed = engine.speed or decode_speed(engine.pipeline.decoder)
            self.rows.append((engine.name, engine.description, self.agreement(engine.pipeline), engine.speed,
                              engine.size))
            predictors.append(PipelinePredictor(engine.name, engine.pipeline))
        scores = self.compare(predictors)
        rows = [Row(name, description, scores[name], agreement, speed, size)
                for name, description, agreement, speed, size in self.rows]
        gate = next(r for r in rows if r.name == gate_row)
        o = self.options
        report = Report(self.mode, {"name": BENCHMARK, "data": str(o.eval_data),
                                    "questions": int(scores[rows[0].name].overall["count"])},
                        rows, Gate(gate.name, rows[0].accuracy()["overall"], gate.accuracy()["overall"],
                                   o.max_drop_points, o.accept_drop),
                        self.calibration, self.sizes, self.artifacts)
        report.write(self.directory, (self.directory / "comparison.md").read_text(encoding="utf-8"))
        return report
