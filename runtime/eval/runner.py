"""Run a predictor over a benchmark's questions, in batches, appending each answer to a results file
(JSONL) as soon as it exists, so an interrupted run resumes where it stopped; then score.

The predictor (predictors.py) is an engine's Pipeline or the PyTorch oracle. Decoding is greedy
unless the caller passes other SamplingParams.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from ..sampling import SamplingParams
from .benchmarks import Benchmark, Score, get_benchmark
from .predictors import Predictor, Request
from .progress import Progress
from .questions import BenchmarkDataError, Question

RESULTS_FORMAT = 1


def greedy(max_new_tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)


class ResultsFile:
    """answers.jsonl: a header line (benchmark, backend, sampling), then one line per answer."""

    def __init__(self, path: str | Path, benchmark: str, backend: str, params: SamplingParams):
        self.path = Path(path)
        # Through JSON once so it compares equal to what a later run reads back.
        self.header = json.loads(json.dumps(
            {"aerie_eval_results": RESULTS_FORMAT, "benchmark": benchmark, "backend": backend, "sampling": asdict(params)}
        ))

    def load(self, questions: Sequence[Question]) -> dict[str, str]:
        """The answers already in the file (creating it if absent); checks they belong to this run."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.header) + "\n", encoding="utf-8")
            return {}
        self._drop_partial_line()
        lines = self.path.read_text(encoding="utf-8").splitlines()
        header = self._parse(lines[0], 1) if lines else None
        if header != self.header:
            raise BenchmarkDataError(
                f"{self.path}: written by another run ({header}); this run is {self.header}. "
                "Give a new results path, or delete the file to start over"
            )
        prompts = {q.question_id: q.text for q in questions}
        answers: dict[str, str] = {}
        for number, line in enumerate(lines[1:], 2):
            record = self._parse(line, number)
            qid = str(record.get("question_id"))
            if prompts.get(qid) != record.get("prompt"):
                raise BenchmarkDataError(
                    f"{self.path}:{number}: question {qid!r} is not in this question set (or its prompt changed); "
                    "the file belongs to other data: give a new results path"
                )
            answers[qid] = str(record.get("text", ""))
        return answers

    def append(self, question: Question, text: str) -> None:
        record = {"question_id": question.question_id, "prompt": question.text, "text": text,
                  "categories": list(question.categories)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _parse(self, line: str, number: int) -> dict:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{self.path}:{number}: not JSON ({e}); the results file is damaged") from None
        if not isinstance(record, dict):
            raise BenchmarkDataError(f"{self.path}:{number}: expected a JSON object; the results file is damaged")
        return record

    def _drop_partial_line(self) -> None:
        """A run killed mid-write leaves a last line without its newline: cut it, that answer is redone."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)


def check_images(questions: Sequence[Question]) -> None:
    missing = [image for q in questions for image in q.images if not Path(image).is_file()]
    if missing:
        raise BenchmarkDataError(
            f"{len(missing)} of {sum(len(q.images) for q in questions)} images not found (first: {missing[0]}); "
            "point --images at the benchmark's image folder"
        )


def answer_questions(
    predictor: Predictor,
    questions: Sequence[Question],
    params: SamplingParams,
    results: ResultsFile | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> dict[str, str]:
    """Every question's answer (stripped): those already in `results`, then the rest, batch by batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    answers = results.load(questions) if results is not None else {}
    todo = [q for q in questions if q.question_id not in answers]
    check_images(todo)
    bar = Progress(len(questions), done=len(questions) - len(todo), label=predictor.name, enabled=progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        texts = predictor.answer([Request(q.text, q.images) for q in batch], params)
        if len(texts) != len(batch):
            raise RuntimeError(f"{predictor.name} gave {len(texts)} answers for {len(batch)} requests")
        for question, text in zip(batch, texts):
            answers[question.question_id] = text.strip()
            if results is not None:
                results.append(question, text.strip())
        bar.advance(len(batch))
    bar.close()
    return answers


def run_benchmark(
    predictor: Predictor,
    benchmark: str | Benchmark,
    data: str | Path,
    images: str | Path | None = None,
    results: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    params: SamplingParams | None = None,
    progress: bool = True,
) -> Score:
    """Read the benchmark's questions, answer them with `predictor` (resuming from `results`), score."""
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    questions = bench.read(data, images)[:limit]
    params = params if params is not None else greedy(bench.max_new_tokens)
    results_file = ResultsFile(results, bench.name, predictor.name, params) if results is not None else None
    answers = answer_questions(predictor, questions, params, results_file, batch_size, progress)
    return bench.score(questions, answers)


def category_scores(predictor: Predictor, benchmark: str = "synthetic", **kwargs) -> dict[str, float]:
    """Per category, the benchmark's comparison metric for one predictor (e.g. synthetic exact match),
    plus the headline number as "overall"; the quantization accuracy gate calls this.
    Keyword arguments go to run_benchmark."""
    return run_benchmark(predictor, benchmark, **kwargs).by_category()
