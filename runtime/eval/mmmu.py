"""MMMU validation: the Hugging Face release, one folder per subject with `validation-*.parquet` (id,
question, options as a Python list literal, image_1..image_7, answer, question_type). Images are
written once to `mmmu_images/` beside the data.

Prompt (lmms-eval's): multiple choice, the question, lettered options and the letter instruction; open
questions, the question and "Answer the question using a single word or phrase.". The images are the
ones the question and options mention (`<image k>`, first mention first; image_1 when none is
mentioned), placed before the text; the `<image k>` references stay in the text, as MMMU's own LLaVA
runs send them.

Scoring is MMMU's eval_utils.py: a multiple-choice response is parsed for "(A)", then " A ", then (for
responses over five words) an option's text, the last mention winning; when nothing is found MMMU picks
a random letter: here from a generator seeded by the question id, so a run is reproducible. An open
response is cut to the part after "so", "is", "answer", ... (and "=" in the last sentence), numbers are
pulled out, and it is right when a normalized number equals the answer's or the answer's text is in it.
Accuracy per discipline and subject.
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path

from .multiple_choice import LETTERS, multiple_choice_prompt
from .questions import BenchmarkDataError, Question, check_unique, require
from .readers import short_answer_prompt
from .tables import parquet_image_bytes, read_parquet, save_image

DISCIPLINES = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"),
}
IMAGE_MENTION = re.compile(r"<image (\d+)>")
KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def parse_choice(response: str, choices: tuple[str, ...], seed: str) -> str:
    """MMMU's parse_multi_choice_response: the letter a response picks."""
    letters = LETTERS[:len(choices)]
    for mark in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(mark)
    response = f" {response} "
    candidates = [c for c in letters if f"({c})" in response]
    bracketed = bool(candidates)
    if not candidates:
        candidates = [c for c in letters if f" {c} " in response]
    by_text = False
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, text in zip(letters, choices) if text.lower() in response.lower()]
        by_text = bool(candidates)
    if not candidates:
        return random.Random(seed).choice(letters)
    if len(candidates) == 1:
        return candidates[0]
    if by_text:
        positions = [response.lower().rfind(choices[letters.index(c)].lower()) for c in candidates]
    else:
        positions = [response.rfind(f"({c})" if bracketed else f" {c} ") for c in candidates]
    return candidates[positions.index(max(positions))]  # the last one mentioned (first of ties, as argmax)


def is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_open(text: str) -> list[float | str]:
    """A number (commas dropped, rounded to 2 places) or lower-cased text; one letter gets spaces around it."""
    text = text.strip()
    if is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


NUMBER_PATTERNS = (
    r"-?\b\d{1,3}(?:,\d{3})+\b",                          # with thousands commas
    r"-?\d+(?:\.\d+)?[eE][+-]?\d+",                        # scientific notation
    r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])",  # plain
)


def extract_numbers(text: str) -> list[str]:
    return [n for pattern in NUMBER_PATTERNS for n in re.findall(pattern, text)]


def key_parts(response: str) -> list[str]:
    """The shortest tail of each sentence after an answer indicator. As in MMMU, the text is lower-cased
    before the sentence split that looks for a capital, so sentences split at newlines only."""
    response = response.strip().strip(".").lower()
    sentences = re.split(r"\.\s(?=[A-Z])|\n", response)
    parts = []
    for i, sentence in enumerate(sentences):
        indicators = KEY_INDICATORS + (("=",) if i == len(sentences) - 1 else ())
        shortest = ""
        for indicator in indicators:
            if indicator in sentence:
                tail = sentence.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):  # an empty tail is replaced by the next one
                    shortest = tail
        if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
            parts.append(shortest)
    return parts or [response]


def parse_open(response: str) -> list[float | str]:
    """MMMU's parse_open_response: the candidate answers (numbers and texts, normalized) in a response."""
    parts = key_parts(response)
    candidates = parts + [n for part in parts for n in extract_numbers(part)]
    return list(dict.fromkeys(value for c in candidates for value in normalize_open(c)))


def open_match(golds: tuple[str, ...], predicted: list[float | str]) -> bool:
    """MMMU's eval_open: a number equal to a gold number, or a gold text inside a predicted text."""
    norm = [value for gold in golds for value in normalize_open(gold)]
    for value in predicted:
        if isinstance(value, str):
            if any(isinstance(g, str) and g in value for g in norm):
                return True
        elif value in norm:
            return True
    return False


def mmmu_match(question: Question, prediction: str) -> float:
    if question.choices:
        return float(parse_choice(prediction, question.choices, question.question_id) in question.answers)
    return float(open_match(question.answers, parse_open(prediction)))


def subject_of(question_id: str) -> str:
    """"validation_Art_Theory_12" -> "Art_Theory"."""
    return "_".join(question_id.split("_")[1:-1])


def discipline_of(subject: str) -> str:
    return next((d for d, subjects in DISCIPLINES.items() if subject in subjects), "other")


def literal_list(value: str, where: str) -> list[str]:
    try:
        parsed = ast.literal_eval(value) if value.strip() else []
    except (ValueError, SyntaxError):
        raise BenchmarkDataError(f"{where}: 'options' must be a list literal, got {value[:80]!r}") from None
    if not isinstance(parsed, list):
        raise BenchmarkDataError(f"{where}: 'options' must be a list literal, got {value[:80]!r}")
    return [str(o) for o in parsed]


def gold_answers(answer: str) -> tuple[str, ...]:
    """An open answer may be a list literal of equally right answers (MMMU's answer_dict_val.json)."""
    if answer.startswith("["):
        try:
            parsed = ast.literal_eval(answer)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list) and parsed:
            return tuple(str(a) for a in parsed)
    return (answer,)


def read_mmmu(path: Path, images: Path | None = None) -> list[Question]:
    folder = path if path.is_dir() else path.parent
    root = images if images is not None else folder / "mmmu_images"
    questions = []
    for r in read_parquet(path, "**/validation-*.parquet"):
        qid = str(require(r, "id", f"{path}: a row"))
        where = f"{path}: {qid}"
        question = str(require(r, "question", where))
        multiple = require(r, "question_type", where) == "multiple-choice"
        choices = tuple(literal_list(str(r.get("options") or ""), where)) if multiple else ()
        mentioned = [int(k) for k in IMAGE_MENTION.findall(" ".join((question, *choices)))]
        numbers = list(dict.fromkeys(mentioned)) or [1]
        paths = []
        for k in numbers:
            if r.get(f"image_{k}") is None:
                raise BenchmarkDataError(f"{where}: mentions <image {k}> but has no image_{k}")
            data = parquet_image_bytes(r[f"image_{k}"], f"{where} image_{k}")
            paths.append(save_image(data, root, f"{qid}_{k}", where))
        subject = subject_of(qid)
        questions.append(Question(
            question_id=qid,
            text=multiple_choice_prompt(question, choices) if multiple else short_answer_prompt(question),
            answers=gold_answers(str(require(r, "answer", where)).strip()),
            images=tuple(paths),
            categories=(discipline_of(subject), subject),
            choices=choices,
        ))
    return check_unique(questions, path)
