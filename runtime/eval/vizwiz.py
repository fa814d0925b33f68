"""VizWiz-VQA val: `val.json` (a list of image, question, 10 answers with confidence, answer_type,
answerable), images in `val/` beside it. Questions by blind people: some cannot be answered from the
photo, and the prompt (LLaVA-1.5's, lmms-eval's) asks the model to say 'Unanswerable' then.

Scoring follows the VizWiz challenge: the prediction gets the EvalAI normalization (LLaVA's
convert_vizwiz_for_submission.py), then the VizWiz evaluator's VQA accuracy against the human answers
*as written* (it does not normalize them: a human "Coca-Cola" never matches), per answer type (yes/no,
number, other, unanswerable). Unanswerability is scored as the evaluator does, as a classifier whose
positive class is "unanswerable" (a prediction is positive when it normalizes to "unanswerable"):
average precision and F1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .questions import BenchmarkDataError, Question, check_unique, require
from .readers import annotation_records, short_answer_prompt
from .vqa_accuracy import leave_one_out_accuracy, normalize_vqa_answer

UNANSWERABLE = "unanswerable"
UNANSWERABLE_INSTRUCTION = "When the provided information is insufficient, respond with 'Unanswerable'."


def vizwiz_accuracy(question: Question, prediction: str) -> float:
    return leave_one_out_accuracy(normalize_vqa_answer(prediction), question.answers)


def predicts_unanswerable(prediction: str) -> bool:
    return normalize_vqa_answer(prediction) == UNANSWERABLE


def unanswerable_metrics(predicted: Sequence[bool], unanswerable: Sequence[bool]) -> dict[str, float]:
    """Average precision and F1 of "unanswerable" predictions (scores 0 or 1, as the evaluator's are).

    With two score levels the precision-recall curve has two points: the predicted positives, then
    everything; AP = R1 * P1 + (1 - R1) * (positives / all). With no unanswerable question at all, both
    are 0 (scikit-learn would warn and give 0 as well).
    """
    positives = sum(unanswerable)
    tp = sum(p and u for p, u in zip(predicted, unanswerable))
    fp = sum(p and not u for p, u in zip(predicted, unanswerable))
    fn = positives - tp
    if positives == 0:
        return {"unanswerable_ap": 0.0, "unanswerable_f1": 0.0}
    recall = tp / positives
    precision = tp / (tp + fp) if tp + fp else 0.0
    base_rate = positives / len(unanswerable)
    ap = recall * precision + (1 - recall) * base_rate
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {"unanswerable_ap": ap, "unanswerable_f1": f1}


def read_vizwiz(path: Path, images: Path | None = None) -> list[Question]:
    root = images if images is not None else path.parent / "val"
    questions = []
    for i, r in enumerate(annotation_records(path, key=None)):
        where = f"{path}: [{i}]"
        answers = require(r, "answers", where)
        if not isinstance(answers, list) or not all(isinstance(a, dict) and "answer" in a for a in answers) or not answers:
            raise BenchmarkDataError(f"{where}: 'answers' must be a list of {{answer, answer_confidence}}; "
                                     "the test split has none, use val.json")
        image = str(require(r, "image", where))
        questions.append(Question(
            question_id=image,  # VizWiz names each question by its image
            text=short_answer_prompt(f"{str(require(r, 'question', where)).strip()}\n{UNANSWERABLE_INSTRUCTION}"),
            answers=tuple(str(a["answer"]) for a in answers),
            images=(str(root / image),),
            categories=(str(r.get("answer_type") or "all"),),
            details={"answerable": int(r.get("answerable", 1))},
        ))
    return check_unique(questions, path)
