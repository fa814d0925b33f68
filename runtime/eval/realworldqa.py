"""RealWorldQA: xAI's release on Hugging Face, `data/test-*.parquet` (question with its options and
instruction already written in, answer, image). The question is sent as written (lmms-eval's default).

Scoring is lmms-eval's: when the answer is a letter A-D the response's letter is read by lmms-eval's
ranked rule (multiple_choice.ranked_letter); otherwise the response, lower-cased and without a final
period, must equal the answer. Images are written once to `realworldqa_images/` beside the data.
"""

from __future__ import annotations

from pathlib import Path

from .multiple_choice import ranked_letter
from .questions import Question, check_unique, require
from .tables import parquet_image_bytes, read_parquet, save_image

LETTER_ANSWERS = ("A", "B", "C", "D")


def realworldqa_match(question: Question, prediction: str) -> float:
    answer = question.answers[0].strip()
    if answer.upper() in LETTER_ANSWERS:
        return float(ranked_letter(prediction, LETTER_ANSWERS) == answer.upper())
    return float(prediction.lower().strip().rstrip(".") == answer.lower())


def read_realworldqa(path: Path, images: Path | None = None) -> list[Question]:
    folder = path if path.is_dir() else path.parent
    root = images if images is not None else folder / "realworldqa_images"
    questions = []
    for i, r in enumerate(read_parquet(path, "**/*.parquet")):
        where = f"{path}: row {i}"
        answer = str(require(r, "answer", where)).strip()
        questions.append(Question(
            question_id=str(i),
            text=str(require(r, "question", where)).strip(),
            answers=(answer,),
            images=(save_image(parquet_image_bytes(require(r, "image", where), where), root, str(i), where),),
            categories=("multiple choice" if answer.upper() in LETTER_ANSWERS else "open",),
        ))
    return check_unique(questions, path)
