"""OCRBench: `OCRBench.json` (a list of dataset_name, id, image_path, question, answers, type) and the
images in `OCRBench_Images/`, beside the file or beside its folder (the release's layout).

Scoring is OCRBench's own: a question scores 1 when one of its answers is a substring of the prediction,
both lower-cased, trimmed, newlines as spaces; for the handwritten formulas (dataset HME100k) case is
kept and every space removed instead. Points are summed per type; Text Recognition is the sum of the six
recognition types, and the final score the sum of everything: out of 1000 on the whole benchmark.
"""

from __future__ import annotations

from pathlib import Path

from .questions import Question, as_answers, check_unique, require
from .readers import annotation_records

RECOGNITION = ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
               "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition")
FORMULAS = "HME100k"


def ocrbench_hit(question: Question, prediction: str) -> float:
    if question.details.get("dataset") == FORMULAS:
        predicted = prediction.strip().replace("\n", " ").replace(" ", "")
        return float(any(a.strip().replace("\n", " ").replace(" ", "") in predicted for a in question.answers))
    predicted = prediction.lower().strip().replace("\n", " ")
    return float(any(a.lower().strip().replace("\n", " ") in predicted for a in question.answers))


def ocrbench_totals(points: dict[str, float]) -> dict[str, float]:
    """Text Recognition and the final score from the points per type."""
    recognition = sum(v for k, v in points.items() if k in RECOGNITION)
    return {"final_score": sum(points.values()), "text_recognition": recognition}


def answers_as_text(value: object) -> object:
    """OCRBench writes some answers as numbers."""
    return [str(a) for a in value] if isinstance(value, list) else str(value) if isinstance(value, (int, float)) else value


def read_ocrbench(path: Path, images: Path | None = None) -> list[Question]:
    if images is None:
        beside = path.parent / "OCRBench_Images"
        images = beside if beside.is_dir() else path.parent.parent / "OCRBench_Images"
    questions = []
    for i, r in enumerate(annotation_records(path, key=None)):
        where = f"{path}: [{i}]"
        questions.append(Question(
            question_id=str(r.get("id", i)),
            text=str(require(r, "question", where)).strip(),
            answers=as_answers(answers_as_text(require(r, "answers", where)), where),
            images=(str(images / str(require(r, "image_path", where))),),
            categories=(str(require(r, "type", where)),),
            details={"dataset": str(r.get("dataset_name", ""))},
        ))
    return check_unique(questions, path)
