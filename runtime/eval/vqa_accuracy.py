"""VQA accuracy (VQAv2, TextVQA, VizWiz): the EvalAI answer normalization and the 10-annotator soft score.

Normalization follows the EvalAI processor the VQA and TextVQA servers apply to every answer (the one
LLaVA's TextVQA evaluator uses): lower-case; drop commas, question marks; split "'s"; strip
punctuation (removed, or replaced by a space when it sits inside a word); drop periods not followed
by a digit; map number words to digits ("two" -> "2", "none" -> "0"); drop articles; restore
apostrophes in contractions ("dont" -> "don't").

Score: for each of the n leave-one-out subsets of the human answers, min(#humans in the subset who
gave the prediction / 3, 1); the accuracy is the mean over the n subsets.
"""

from __future__ import annotations

import re
from typing import Sequence

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# A period is punctuation unless a digit follows it (3.5 keeps its point).
PERIOD = re.compile(r"\.(?!\d)")
DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")

# Apostrophe-less spellings and the contraction they stand for (EvalAI's table).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def strip_punctuation(text: str) -> str:
    """Remove each punctuation mark; one glued between two words ("left-hand") becomes a space instead."""
    out = text
    has_digit_comma = DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD.sub("", out)


def normalize_words(text: str) -> str:
    """Number words to digits, articles dropped, contractions restored."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """The EvalAI normalization of one answer (prediction or human answer)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return normalize_words(strip_punctuation(text))


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Mean over the leave-one-out subsets of the human answers of min(#matches / 3, 1).

    With a single reference answer (question files that keep only one), the reference counts as the
    answer of all ten annotators: the score is 1 for a match after normalization, else 0.
    """
    if not human_answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    predicted = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(a) for a in human_answers]
    if len(humans) == 1:
        return float(predicted == humans[0])
    return leave_one_out_accuracy(predicted, humans)


def leave_one_out_accuracy(predicted: str, humans: Sequence[str]) -> float:
    """The soft score of an answer already normalized, against the human answers as given."""
    matches = sum(h == predicted for h in humans)
    # Leaving out a matching annotator leaves matches - 1 others; leaving out any other leaves matches.
    total = sum(min((matches - (h == predicted)) / 3, 1.0) for h in humans)
    return total / len(humans)
