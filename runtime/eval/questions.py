"""A benchmark question, and question files in the LLaVA evaluation JSONL format.

One JSON object per line: `question_id`, `image` (relative to the image folder), `text` (the prompt as
sent, the benchmark's instruction included), the reference answers as `answers` (a list or a string),
`answer` or `label` (POPE), and optionally `category` (or a `categories` list).

A question file of this format carries no options, groups or answer types: the benchmarks whose scoring
needs them (the multiple-choice ones, OCRBench, MathVista, MMBench, MMVP) read their own files only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import AerieError

DEFAULT_CATEGORY = "all"


class BenchmarkDataError(AerieError):
    """A question or results file is missing, malformed, or does not match the benchmark."""


@dataclass(frozen=True)
class Question:
    question_id: str
    text: str  # the prompt as sent, options and instruction included
    answers: tuple[str, ...]
    images: tuple[str, ...] = ()  # file paths, in the order the prompt shows them; () for a text-only question
    categories: tuple[str, ...] = (DEFAULT_CATEGORY,)
    choices: tuple[str, ...] = ()  # a multiple-choice question's options, lettered A, B, ... in this order
    group: str = ""  # questions scored together: one MMBench question's rotations, one MMVP pair
    details: Mapping[str, object] = field(default_factory=dict)  # what one benchmark's scorer needs besides

    @property
    def image(self) -> str | None:
        """The first image (the only one, for every benchmark but MMMU)."""
        return self.images[0] if self.images else None


def read_json(path: Path) -> object:
    """A whole-file JSON document, or a BenchmarkDataError naming the file and what is wrong."""
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: no such file; check --data")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkDataError(f"{path}: not valid JSON ({e}); is it the benchmark's annotation file?") from None


def read_json_lines(path: Path) -> list[dict]:
    """One JSON object per non-empty line (LLaVA question files, POPE's coco_pope_*.json)."""
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: no such file; check --data")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{path}:{number}: not a JSON object per line ({e})") from None
        if not isinstance(record, dict):
            raise BenchmarkDataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def require(record: dict, key: str, where: str) -> object:
    if key not in record:
        raise BenchmarkDataError(f"{where}: missing field {key!r} (has {', '.join(sorted(record)) or 'nothing'})")
    return record[key]


def as_answers(value: object, where: str) -> tuple[str, ...]:
    answers = (value,) if isinstance(value, str) else value
    if not isinstance(answers, (list, tuple)) or not answers or not all(isinstance(a, str) for a in answers):
        raise BenchmarkDataError(f"{where}: reference answers must be a non-empty string or list of strings, got {value!r}")
    return tuple(answers)


def check_unique(questions: Sequence[Question], source: Path) -> list[Question]:
    seen: set[str] = set()
    for q in questions:
        if q.question_id in seen:
            raise BenchmarkDataError(f"{source}: question_id {q.question_id!r} appears twice; ids must be unique")
        seen.add(q.question_id)
    if not questions:
        raise BenchmarkDataError(f"{source}: no questions found")
    return list(questions)


def read_llava_jsonl(path: Path, images: Path | None = None) -> list[Question]:
    """Questions from a LLaVA-style JSONL file; images are relative to `images` (default: the file's folder)."""
    root = images if images is not None else path.parent
    questions = []
    for number, record in enumerate(read_json_lines(path), 1):
        where = f"{path}:{number}"
        answer_key = next((k for k in ("answers", "answer", "label") if k in record), None)
        if answer_key is None:
            raise BenchmarkDataError(f"{where}: no reference answers; add an 'answers' list (or 'answer' / 'label')")
        categories = record.get("categories") or [record.get("category") or DEFAULT_CATEGORY]
        image = record.get("image")
        questions.append(Question(
            question_id=str(require(record, "question_id", where)),
            text=str(require(record, "text", where)),
            answers=as_answers(record[answer_key], where),
            images=(str(root / image),) if image else (),
            categories=tuple(str(c) for c in categories),
        ))
    return check_unique(questions, path)

