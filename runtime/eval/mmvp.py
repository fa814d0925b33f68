"""MMVP: `Questions.csv` (Index, Question, Options "(a) ... (b) ...", Correct Answer "(a)"/"(b)") and the
images `MMVP Images/<Index>.jpg` beside it. Questions come in pairs (1-2, 3-4, ...): two images CLIP
sees as alike, the same question, opposite answers.

Prompt: the question and options as A/B lines with the letter instruction (lmms-eval's). MMVP's own
grader is GPT; here the letter is read by lmms-eval's rules (multiple_choice.mmvp_letter). The headline
is MMVP's: a pair counts only when both of its questions are right; per-question accuracy beside it.
The CSV is read as released (lmms-eval's copy swaps the answers of pairs 99-100 and 279-280, which its
authors judged wrong).
"""

from __future__ import annotations

import re
from pathlib import Path

from .multiple_choice import multiple_choice_prompt, mmvp_letter
from .questions import BenchmarkDataError, Question, check_unique, require
from .tables import read_delimited

OPTION = re.compile(r"\([a-z]\)\s*([^(]+?)(?=\s*\([a-z]\)|$)", re.IGNORECASE)


def mmvp_match(question: Question, prediction: str) -> float:
    return float(mmvp_letter(prediction) == question.answers[0])


def mmvp_answer_letter(value: str, where: str) -> str:
    letter = value.strip().strip("()").upper()
    if letter not in ("A", "B"):
        raise BenchmarkDataError(f"{where}: 'Correct Answer' must be (a) or (b), got {value!r}")
    return letter


def read_mmvp(path: Path, images: Path | None = None) -> list[Question]:
    csv_file = path / "Questions.csv" if path.is_dir() else path
    root = images if images is not None else csv_file.parent / "MMVP Images"
    questions = []
    for number, row in enumerate(read_delimited(csv_file, ","), 2):
        where = f"{csv_file}:{number}"
        written = str(require(row, "Index", where)).strip()
        if not written.isdigit():
            raise BenchmarkDataError(f"{where}: 'Index' must be a number, got {written!r}; is it MMVP's Questions.csv?")
        index = int(written)
        options = tuple(o.strip() for o in OPTION.findall(str(require(row, "Options", where))))
        if len(options) != 2:
            raise BenchmarkDataError(f"{where}: 'Options' must hold (a) and (b), got {row['Options']!r}")
        questions.append(Question(
            question_id=str(index),
            text=multiple_choice_prompt(str(require(row, "Question", where)).strip(), options),
            answers=(mmvp_answer_letter(str(require(row, "Correct Answer", where)), where),),
            images=(str(root / f"{index}.jpg"),),
            choices=options,
            group=str((index - 1) // 2),
        ))
    return check_unique(questions, csv_file)
