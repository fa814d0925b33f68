"""Multiple-choice questions: the prompt LLaVA-1.5 and lmms-eval send, and the letter-reading rules of
the scripts that score them.

The prompt: the context (if any), the question, one `A. option` line per option, then "Answer with the
option's letter from the given choices directly." Each benchmark's script reads the chosen letter its
own way; each rule below names the script it follows, and a response none of them can read scores 0.
"""

from __future__ import annotations

import re
import string
from typing import Sequence

LETTERS = string.ascii_uppercase
ANSWER_WITH_LETTER = "Answer with the option's letter from the given choices directly."


def option_lines(choices: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices))


def multiple_choice_prompt(question: str, choices: Sequence[str], context: str = "") -> str:
    """`context` (a hint, a passage) goes on the lines before the question, as given."""
    if len(choices) > len(LETTERS):
        raise ValueError(f"{len(choices)} options; at most {len(LETTERS)} can be lettered")
    head = f"{context}\n" if context else ""
    return f"{head}{question}\n{option_lines(choices)}\n{ANSWER_WITH_LETTER}"


def scienceqa_letter(response: str, n_choices: int) -> str | None:
    """LLaVA's eval_science_qa.py: the response is a letter, or starts with "X. ", or says "The answer is X."
    exactly once; the letter must name one of the options."""
    options = LETTERS[:5]  # the script's option list, A-E, cut to the question's options below
    if response in options:
        letter = response
    elif len(response) >= 3 and response[0] in options and response[1:3] == ". ":
        letter = response[0]
    else:
        found = re.findall(r"The answer is ([A-Z]).", response)
        letter = found[0] if len(found) == 1 else None
    return letter if letter is not None and letter in LETTERS[:n_choices] else None


def first_character(response: str) -> str:
    """lmms-eval's SEED-Bench rule: the first character of the stripped response, upper-cased."""
    return response.strip()[:1].upper()


STRIP_PUNCTUATION = str.maketrans("", "", string.punctuation)
LETTER_AND_PERIOD = re.compile(r"^\s*([A-Z])\.")


def ai2d_matches(response: str, letter: str) -> bool:
    """lmms-eval's AI2D: a leading "X." gives the letter, otherwise the whole response is compared;
    then exact match with case and all ASCII punctuation ignored ("(B)" and "b" both read as B)."""
    found = LETTER_AND_PERIOD.match(response)
    picked = found.group(1) if found else response
    return picked.lower().translate(STRIP_PUNCTUATION) == letter.lower().translate(STRIP_PUNCTUATION)


# lmms-eval's MMVP letter patterns, tried in order (the first that matches anywhere wins).
MMVP_PATTERNS = (
    r"^\s*\(?([AB])\)?\.?\s*$",      # the letter alone, maybe in brackets or with a period
    r"^\s*\(?([AB])\)?[\.\s]",       # the letter first
    r"answer\s+is\s+\(?([AB])\)?",   # "the answer is A"
    r"option\s+\(?([AB])\)?",        # "option B"
    r"\(?([AB])\)?(?:\s|$)",         # any A or B followed by a space or the end
)


def mmvp_letter(response: str) -> str:
    """lmms-eval's MMVP rule (standing in for MMVP's GPT grader): A or B, or "" when there is none."""
    text = response.strip()
    for pattern in MMVP_PATTERNS:
        found = re.search(pattern, text, flags=re.IGNORECASE)
        if found:
            return found.group(1).upper()
    return text[:1].upper() if text[:1].upper() in ("A", "B") else ""


# lmms-eval's extract_mcq_answer (RealWorldQA): every way a letter can be written, ranked; the
# best-ranked form wins and, within a form, the last occurrence.
ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
    "i pick", "my answer is", "my choice is",
)
FORM_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
             "space": 2, "fallback": 0}


def ranked_letter(response: str, letters: Sequence[str] = tuple("ABCDEFGH")) -> str:
    """The letter a free-form response picks, or "" when it names none."""
    text = response.strip()
    if not text:
        return ""
    for mark in ",.!?;:'\"":
        text = text.strip(mark)
    text = f" {text} "
    found: list[tuple[int, int, str]] = []  # (rank, position, letter)
    for form, template in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                           ("space", "{} ")):
        for letter in letters:
            if template.format(letter) in text:
                found.append((FORM_RANK[form], text.rfind(template.format(letter)), letter))
    lowered = text.lower()
    for phrase in ANSWER_PHRASES:
        at = lowered.find(phrase)
        if at != -1:
            for letter in letters:
                position = text.find(letter, at + len(phrase))
                if position != -1:
                    found.append((FORM_RANK["phrase"], position, letter))
    bare = text.strip()
    for letter in letters:
        if bare.startswith(letter) and (len(bare) == 1 or not bare[1].isalpha()):
            found.append((FORM_RANK["start"], 0, letter))
        if bare.endswith(letter) and (len(bare) == 1 or not bare[-2].isalpha()):
            found.append((FORM_RANK["end"], len(text) - 1, letter))
    if not found:
        found = [(FORM_RANK["fallback"], text.rfind(letter), letter) for letter in letters if letter in text]
    return max(found, key=lambda f: (f[0], f[1]))[2] if found else ""
