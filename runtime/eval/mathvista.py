"""MathVista testmini: `testmini.json` or `annot_testmini.json` (problem id -> question, image, choices,
unit, precision, answer, question_type, answer_type, metadata), images `images/<pid>.jpg` beside it.

Prompt: lmms-eval's "format-prompt" (the one the Eagle evaluation uses): the question (with its unit),
lettered options for multiple choice, and a one-line instruction by answer type.

Scoring: MathVista's extract_answer without its GPT step: the response itself when it is one of the
options, or reads as an integer / float for those answer types, or the text of `The answer is "..."`;
else the response as it is stands in for what the judge would extract. Then MathVista's normalization:
a letter (or "(B)") becomes its option, any other text the option nearest by edit distance; integers
via int(float(x)); floats rounded to the problem's precision; then string equality with the answer.
Accuracy per task and per skill.
"""

from __future__ import annotations

import re
from pathlib import Path

from .anls import levenshtein
from .multiple_choice import LETTERS, multiple_choice_prompt
from .questions import BenchmarkDataError, Question, check_unique, read_json, require

DECIMAL_PLACES = {1: "one decimal place", 2: "two decimal places", 3: "three decimal places"}
QUOTED_ANSWER = re.compile(r'The answer is "(.*)"\.')
BRACKETED_LETTER = re.compile(r"\(([a-zA-Z])\)")


def instruction(answer_type: str, precision: int | None) -> str:
    if answer_type == "integer":
        return "Answer the question using a single integer number."
    if answer_type == "float":
        places = DECIMAL_PLACES.get(precision or 0, f"{precision} decimal places")
        return f"Answer the question using a single floating-point number with {places}."
    if answer_type == "list":
        return "Answer the question using a Python list."
    raise BenchmarkDataError(f"MathVista: a free-form question with answer type {answer_type!r}")


def mathvista_prompt(question: str, unit: str, choices: tuple[str, ...], answer_type: str, precision: int | None) -> str:
    text = f"{question} (Unit: {unit})" if unit else question
    if choices:
        return multiple_choice_prompt(text, choices)
    return f"{text}\n{instruction(answer_type, precision)}"


def extract_answer(response: str, choices: tuple[str, ...], answer_type: str) -> str:
    """MathVista's rule-based extraction; the response itself where it would ask GPT."""
    if not response:
        return ""
    if choices and response in choices:
        return response
    if answer_type == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if answer_type == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    quoted = QUOTED_ANSWER.search(response)
    return quoted.group(1) if quoted else response


def normalize_answer(extraction: str, choices: tuple[str, ...], answer_type: str, precision: int | None) -> str | None:
    """MathVista's normalize_extracted_answer."""
    if choices:
        extraction = extraction.strip()
        letter = BRACKETED_LETTER.findall(extraction)
        if letter:
            extraction = letter[0].upper()
        options = LETTERS[:len(choices)]
        if extraction in options:
            return choices[options.index(extraction)]
        distances = [levenshtein(extraction, choice) for choice in choices]
        return choices[distances.index(min(distances))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), precision))
    except (ValueError, OverflowError):
        return None
    return extraction


def mathvista_match(question: Question, prediction: str) -> float:
    answer_type = str(question.details["answer_type"])
    precision = question.details.get("precision")
    extraction = extract_answer(prediction, question.choices, answer_type)
    normalized = normalize_answer(extraction, question.choices, answer_type, precision)
    return float(str(normalized).strip() == question.answers[0].strip())


def read_mathvista(path: Path, images: Path | None = None) -> list[Question]:
    root = images if images is not None else path.parent
    document = read_json(path)
    records = list(document.values()) if isinstance(document, dict) else document
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise BenchmarkDataError(f"{path}: expected MathVista's testmini.json (problem id -> problem)")
    questions = []
    for r in records:
        pid = str(require(r, "pid", f"{path}: a problem"))
        where = f"{path}: problem {pid}"
        answer_type = str(require(r, "answer_type", where))
        precision = r.get("precision")
        precision = int(precision) if isinstance(precision, (int, float)) else None
        choices = tuple(str(c) for c in r.get("choices") or ())
        metadata = r.get("metadata") or {}
        skills = metadata.get("skills") or []
        questions.append(Question(
            question_id=pid,
            text=mathvista_prompt(str(require(r, "question", where)), str(r.get("unit") or ""), choices,
                                  answer_type, precision),
            answers=(str(require(r, "answer", where)),),
            images=(str(root / str(require(r, "image", where))),),
            categories=(f"task/{metadata.get('task', 'unknown')}", *(f"skill/{s}" for s in skills)),
            choices=choices,
            details={"answer_type": answer_type, "precision": precision},
        ))
    return check_unique(questions, path)
