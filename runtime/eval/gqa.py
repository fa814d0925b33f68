"""GQA testdev-balanced: questions from `testdev_balanced_questions.json` (question id -> question,
imageId, answer, types, isBalanced), images `images/<imageId>.jpg` beside it.

Scoring is GQA's eval.py on LLaVA's predictions file: the prediction loses trailing periods and is
lower-cased (LLaVA's convert_gqa_for_eval.py), then must equal the gold answer exactly; only balanced
questions count. Accuracy per structural type (verify, query, choose, logical, compare), per semantic
type (obj, attr, rel, cat, global) and for binary (every structural type but query) and open questions.
"""

from __future__ import annotations

from pathlib import Path

from .questions import BenchmarkDataError, Question, check_unique, read_json, require
from .readers import short_answer_prompt


def normalize_gqa_prediction(text: str) -> str:
    return text.rstrip(".").lower()


def gqa_match(question: Question, prediction: str) -> float:
    return float(normalize_gqa_prediction(prediction) == question.answers[0])


def read_gqa(path: Path, images: Path | None = None) -> list[Question]:
    root = images if images is not None else path.parent / "images"
    document = read_json(path)
    if not isinstance(document, dict) or not all(isinstance(r, dict) for r in document.values()):
        raise BenchmarkDataError(f"{path}: expected an object of question id -> question; is it "
                                 "testdev_balanced_questions.json?")
    questions = []
    for qid, r in document.items():
        where = f"{path}: {qid!r}"
        if not r.get("isBalanced", True):
            continue  # eval.py scores the balanced questions only
        types = require(r, "types", where)
        if not isinstance(types, dict):
            raise BenchmarkDataError(f"{where}: 'types' must be an object with 'structural' and 'semantic'")
        structural, semantic = str(types.get("structural")), str(types.get("semantic"))
        questions.append(Question(
            question_id=str(qid),
            text=short_answer_prompt(str(require(r, "question", where))),
            answers=(str(require(r, "answer", where)),),
            images=(str(root / f"{require(r, 'imageId', where)}.jpg"),),
            categories=(f"structural/{structural}", f"semantic/{semantic}",
                        "open" if structural == "query" else "binary"),
        ))
    return check_unique(questions, path)
