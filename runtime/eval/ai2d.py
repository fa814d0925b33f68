"""AI2D test: the `ai2d/` folder of AI2D's release (`questions/<image>.json` with each question's
answerTexts and correctAnswer, `images/`, `categories.json`) and the test split's image ids,
`ai2d_test_ids.csv`, in that folder (where the usual instructions move it).

Prompt: the question, the four answers as lettered options, the letter instruction (lmms-eval's).
Scoring is lmms-eval's (multiple_choice.ai2d_matches); accuracy per diagram category.
"""

from __future__ import annotations

from pathlib import Path

from .multiple_choice import LETTERS, ai2d_matches, multiple_choice_prompt
from .questions import BenchmarkDataError, Question, check_unique, read_json, require

TEST_IDS = "ai2d_test_ids.csv"


def ai2d_match(question: Question, prediction: str) -> float:
    return float(ai2d_matches(prediction, question.answers[0]))


def read_ai2d(path: Path, images: Path | None = None) -> list[Question]:
    folder = path if path.is_dir() else path.parent
    ids_file = folder / TEST_IDS
    if not (folder / "questions").is_dir() or not ids_file.is_file():
        raise BenchmarkDataError(f"{folder}: expected AI2D's folder with questions/ and {TEST_IDS} (the test split's "
                                 "image ids, a separate download) in it")
    root = images if images is not None else folder / "images"
    categories = read_json(folder / "categories.json") if (folder / "categories.json").is_file() else {}
    questions = []
    for image_id in ids_file.read_text(encoding="utf-8").split():
        file = folder / "questions" / f"{image_id}.png.json"
        document = read_json(file)
        image = str(document.get("imageName", f"{image_id}.png")) if isinstance(document, dict) else ""
        entries = document.get("questions") if isinstance(document, dict) else None
        if not isinstance(entries, dict):
            raise BenchmarkDataError(f"{file}: expected an object with a 'questions' object")
        for text, q in entries.items():
            where = f"{file}: {text!r}"
            choices = tuple(str(a) for a in require(q, "answerTexts", where))
            right = require(q, "correctAnswer", where)
            if not isinstance(right, int) or not 0 <= right < len(choices):
                raise BenchmarkDataError(f"{where}: 'correctAnswer' must index one of its {len(choices)} answers")
            questions.append(Question(
                question_id=str(require(q, "questionId", where)),
                text=multiple_choice_prompt(text, choices),
                answers=(LETTERS[right],),
                images=(str(root / image),),
                categories=(str(categories.get(image, "all")) if isinstance(categories, dict) else "all",),
                choices=choices,
            ))
    return check_unique(questions, ids_file)
