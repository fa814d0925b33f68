"""ScienceQA-IMG: the test questions that have an image, from ScienceQA's `problems.json` (problem id ->
question, choices, answer index, hint, image, subject, grade) and `pid_splits.json` beside it; images
`images/test/<id>/image.png`.

The prompt is lmms-eval's (and LLaVA-1.5's CQM-A): "Context: <hint>" when there is one, the question,
the lettered options, the letter instruction. The letter is read as LLaVA's eval_science_qa.py reads it
(multiple_choice.scienceqa_letter); right when it names the answer's option. Accuracy per subject
(natural, social, language science) and grade band (G1-6, G7-12).
"""

from __future__ import annotations

from pathlib import Path

from .multiple_choice import LETTERS, multiple_choice_prompt, scienceqa_letter
from .questions import BenchmarkDataError, Question, check_unique, read_json, require

SPLIT = "test"


def scienceqa_match(question: Question, prediction: str) -> float:
    return float(scienceqa_letter(prediction, len(question.choices)) == question.answers[0])


def grade_band(grade: str) -> str:
    digits = "".join(c for c in grade if c.isdigit())
    return "G1-6" if digits and int(digits) <= 6 else "G7-12"


def read_scienceqa(path: Path, images: Path | None = None) -> list[Question]:
    """`path`: problems.json, or the folder holding it and pid_splits.json."""
    folder = path if path.is_dir() else path.parent
    problems_file = path / "problems.json" if path.is_dir() else path
    problems = read_json(problems_file)
    splits = read_json(folder / "pid_splits.json")
    if not isinstance(problems, dict) or not isinstance(splits, dict) or not isinstance(splits.get(SPLIT), list):
        raise BenchmarkDataError(f"{folder}: expected ScienceQA's problems.json (id -> problem) and pid_splits.json "
                                 f"(with a {SPLIT!r} list)")
    root = images if images is not None else folder / "images" / SPLIT
    questions = []
    for pid in splits[SPLIT]:
        where = f"{problems_file}: {pid!r}"
        problem = problems.get(str(pid))
        if not isinstance(problem, dict):
            raise BenchmarkDataError(f"{where}: listed in pid_splits.json but not in problems.json")
        if not problem.get("image"):
            continue  # the IMG subset: questions with an image context
        choices = tuple(str(c) for c in require(problem, "choices", where))
        answer = require(problem, "answer", where)
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise BenchmarkDataError(f"{where}: 'answer' must index one of its {len(choices)} choices, got {answer!r}")
        hint = str(problem.get("hint") or "").strip()
        questions.append(Question(
            question_id=str(pid),
            text=multiple_choice_prompt(str(require(problem, "question", where)), choices,
                                        f"Context: {hint}" if hint else ""),
            answers=(LETTERS[answer],),
            images=(str(root / str(pid) / str(problem["image"])),),
            categories=(str(problem.get("subject") or "all"), grade_band(str(problem.get("grade", "")))),
            choices=choices,
        ))
    return check_unique(questions, problems_file)
