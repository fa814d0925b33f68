"""MMBench (dev): a TSV of index, question, hint, options A-D, answer letter, category, l2-category and
the image as base64 (`mmbench_dev_20230712.tsv`). The released TSV already holds each question's
circular copies: rows whose index is the question's plus k * 1,000,000, the options rotated k places.
A TSV without them (one row per question) gets them made here the same way, by rotating the options.

Prompt: LLaVA-1.5's model_vqa_mmbench.py: the hint, the question, the lettered options, the letter
instruction. Circular evaluation: a question counts only if every rotation is answered right. The letter
is read by the MMBench evaluator's rules (a lone letter, "A." / "(A)" / "A:" forms, or the one option
whose text the answer contains); where the evaluator would then ask GPT, the answer counts as wrong.
Accuracy per L2 ability and per ability; images are written once to an image folder (default: beside the
TSV, <name>_images/).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .multiple_choice import LETTERS, multiple_choice_prompt
from .questions import BenchmarkDataError, Question, check_unique
from .tables import decode_base64_image, read_delimited, save_image

CIRCULAR_STRIDE = 1_000_000
MAX_OPTIONS = 4  # MMBench asks with options A-D
# How an answer may write the letter, as (before, after) the letter, after splitting on whitespace.
LETTER_FORMS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                (":", ","), (":", "."), (":", ")"), (":", ")."))
EVALUATOR_LETTERS = "ABCDE"  # the evaluator looks for any of these, whatever the number of options


def missing(value: str | None) -> bool:
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


def mmbench_letter(answer: str, choices: tuple[str, ...]) -> str | None:
    """The letter the MMBench evaluator infers from an answer without asking GPT, or None."""
    words = [w.strip() for w in answer.split()]

    def count(before: str = "", after: str = "") -> int:
        return sum(f"{before}{c}{after}" in words for c in EVALUATOR_LETTERS)

    if count() == 1:
        for letter in EVALUATOR_LETTERS:
            if "A" in words and len(words) > 3:
                break  # "A" may be the article of a sentence
            if letter in words:
                return letter
    for before, after in LETTER_FORMS:
        if count(before, after) == 1:
            return next(c for c in EVALUATOR_LETTERS if f"{before}{c}{after}" in words)
    lowered = answer.lower()
    named = [letter for letter, text in zip(LETTERS, choices) if text.lower() in lowered]
    return named[0] if len(named) == 1 else None


def mmbench_match(question: Question, prediction: str) -> float:
    return float(mmbench_letter(prediction, question.choices) == question.answers[0])


def row_options(row: dict[str, str]) -> list[str]:
    options = []
    for letter in LETTERS[:MAX_OPTIONS]:
        if missing(row.get(letter)):
            break
        options.append(row[letter])
    return options


def rotations(index: int, options: list[str], answer: str) -> list[tuple[int, list[str], str]]:
    """(index, options, answer) for each circular copy of a question: options rotated k to the left."""
    n, right = len(options), LETTERS.index(answer)
    return [(index + k * CIRCULAR_STRIDE, options[k:] + options[:k], LETTERS[(right - k) % n]) for k in range(n)]


def read_mmbench(path: Path, images: Path | None = None) -> list[Question]:
    folder = images if images is not None else path.parent / f"{path.stem}_images"
    rows = read_delimited(path, "\t")
    by_index: dict[int, dict[str, str]] = {}
    for number, row in enumerate(rows, 2):
        try:
            by_index[int(float(row["index"]))] = row
        except (KeyError, TypeError, ValueError):
            raise BenchmarkDataError(f"{path}:{number}: no numeric 'index'; is it an MMBench TSV?") from None
    copies: dict[int, list[int]] = defaultdict(list)
    for index in by_index:
        copies[index % CIRCULAR_STRIDE].append(index)
    questions = []
    for main in sorted(copies):
        if main not in by_index:
            raise BenchmarkDataError(f"{path}: circular copies of question {main} but not the question itself")
        row = by_index[main]
        where = f"{path}: index {main}"
        options = row_options(row)
        answer = (row.get("answer") or "").strip()
        if len(options) < 2 or answer not in LETTERS[:len(options)]:
            raise BenchmarkDataError(f"{where}: needs two or more options and an answer letter among them; the "
                                     "test split has no answers, use the dev TSV")
        owner, encoded = image_field(main, by_index, where)
        image = save_image(decode_base64_image(encoded, where), folder, str(owner), where)
        if len(copies[main]) > 1:  # the TSV's own circular copies
            rounds = [(i, row_options(by_index[i]), (by_index[i].get("answer") or "").strip()) for i in sorted(copies[main])]
        else:
            rounds = rotations(main, options, answer)
        hint = "" if missing(row.get("hint")) else row["hint"].strip()
        categories = tuple(row[key] for key in ("l2-category", "category") if not missing(row.get(key)))
        for index, shown, right in rounds:
            questions.append(Question(
                question_id=str(index),
                text=multiple_choice_prompt(row["question"].strip(), shown, hint),
                answers=(right,),
                images=(image,),
                categories=categories or ("all",),
                choices=tuple(shown),
                group=str(main),
            ))
    return check_unique(questions, path)


def image_field(index: int, by_index: dict[int, dict[str, str]], where: str) -> tuple[int, str]:
    """(the index of the row holding the image, the base64 image): a short number in place of the image
    names the row whose image this one shares."""
    image = (by_index[index].get("image") or "").strip()
    if image.isdigit() and len(image) < 64 and int(image) in by_index:
        index = int(image)
        image = (by_index[index].get("image") or "").strip()
    if not image:
        raise BenchmarkDataError(f"{where}: no image")
    return index, image
