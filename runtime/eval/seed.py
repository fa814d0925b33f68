"""SEED-Bench image questions (SEED-I): `SEED-Bench.json` ({"questions": [question_id, question,
choice_a..choice_d, answer letter, data_id, data_type, question_type_id], "question_type": name -> id}),
the images `SEED-Bench-image/<data_id>` beside it; video questions are skipped.

Prompt: the question and options A-D with the letter instruction (lmms-eval's and LLaVA-1.5's). A
response is read as lmms-eval reads it, by its first character; accuracy per evaluation dimension
(question type: scene understanding, instance identity, ...).
"""

from __future__ import annotations

from pathlib import Path

from .multiple_choice import first_character, multiple_choice_prompt
from .questions import BenchmarkDataError, Question, check_unique, read_json, require

CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")


def seed_match(question: Question, prediction: str) -> float:
    return float(first_character(prediction) == question.answers[0].strip().upper())


def read_seed(path: Path, images: Path | None = None) -> list[Question]:
    root = images if images is not None else path.parent / "SEED-Bench-image"
    document = read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("questions"), list):
        raise BenchmarkDataError(f"{path}: expected an object with a 'questions' list; is it SEED-Bench.json?")
    type_names = {int(v): str(k) for k, v in (document.get("question_type") or {}).items()}
    questions = []
    for i, r in enumerate(document["questions"]):
        where = f"{path}: questions[{i}]"
        if not isinstance(r, dict):
            raise BenchmarkDataError(f"{where}: expected an object")
        if require(r, "data_type", where) != "image":
            continue
        choices = tuple(str(require(r, key, where)) for key in CHOICE_KEYS)
        type_id = int(require(r, "question_type_id", where))
        questions.append(Question(
            question_id=str(require(r, "question_id", where)),
            text=multiple_choice_prompt(str(require(r, "question", where)), choices),
            answers=(str(require(r, "answer", where)),),
            images=(str(root / str(require(r, "data_id", where))),),
            categories=(type_names.get(type_id, f"type {type_id}"),),
            choices=choices,
        ))
    return check_unique(questions, path)
