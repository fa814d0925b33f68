"""Each metric on small hand-made cases whose expected scores are worked out from the official definition."""

import pytest

from runtime.eval.anls import anls, levenshtein
from runtime.eval.benchmarks import get_benchmark
from runtime.eval.exact_match import exact_match
from runtime.eval.mme import mme_subtask_metrics, mme_totals, parse_mme_answer
from runtime.eval.pope import parse_pope_answer, pope_metrics
from runtime.eval.questions import Question
from runtime.eval.relaxed_accuracy import relaxed_accuracy, relaxed_correctness
from runtime.eval.vqa_accuracy import normalize_vqa_answer, vqa_accuracy


# --- VQA accuracy -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, normalized", [
    ("Two", "2"),                    # number words become digits
    ("none", "0"),
    ("ten dogs", "10 dogs"),
    ("The Red Car", "red car"),      # articles dropped, lower-cased
    ("a dog", "dog"),
    ("an apple", "apple"),
    ("dont", "don't"),               # contractions get their apostrophe
    ("isnt", "isn't"),
    ("yes.", "yes"),                 # a period not followed by a digit is punctuation
    ("3.5", "3.5"),                  # ... a decimal point is not
    ("left-hand", "left hand"),      # a mark inside a word becomes a space
    ("coca - cola", "coca cola"),    # a mark next to a space is removed
    ("1,000", "1000"),               # commas go
    ("what?", "what"),
    ("  Stop\tsign \n", "stop sign"),
])
def test_vqa_normalization(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


def leave_one_out_by_hand(prediction: str, humans: list[str]) -> float:
    """The definition, literally: for each of the 10 subsets of 9 humans, min(#matches / 3, 1); mean."""
    accs = []
    for i in range(len(humans)):
        others = humans[:i] + humans[i + 1:]
        accs.append(min(sum(h == prediction for h in others) / 3, 1))
    return sum(accs) / len(accs)


@pytest.mark.parametrize("matching, expected", [
    # k humans said "cat", 10 - k said "dog"; leaving out a "cat" human leaves k - 1 matches, a "dog" one k.
    (0, 0.0),
    (1, (1 * 0 + 9 * (1 / 3)) / 10),          # 0.3
    (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),    # 0.6
    (3, (3 * (2 / 3) + 7 * 1) / 10),          # 0.9
    (4, 1.0),                                 # every subset keeps >= 3 matches
    (10, 1.0),
])
def test_vqa_accuracy_leave_one_out(matching, expected):
    humans = ["cat"] * matching + ["dog"] * (10 - matching)
    assert vqa_accuracy("cat", humans) == pytest.approx(expected)
    assert vqa_accuracy("cat", humans) == pytest.approx(leave_one_out_by_hand("cat", humans))


def test_vqa_accuracy_normalizes_prediction_and_humans():
    humans = ["2", "two", "Two", "2 ", "3", "three", "3", "4", "4", "4"]
    # After normalization four humans say "2": every subset of nine keeps at least three.
    assert vqa_accuracy("two", humans) == 1.0
    # "the 3" -> "3", said by three humans: (3 * 2/3 + 7 * 1) / 10.
    assert vqa_accuracy("the 3", humans) == pytest.approx(0.9)
    assert vqa_accuracy("four", humans) == pytest.approx(0.9)
    assert vqa_accuracy("five", humans) == 0.0


def test_vqa_accuracy_single_reference_is_exact_after_normalization():
    assert vqa_accuracy("The dog.", ["dog"]) == 1.0
    assert vqa_accuracy("dogs", ["dog"]) == 0.0


# --- ANLS ---------------------------------------------------------------------------------------

def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("flaw", "lawn") == 2


def test_anls_around_the_threshold():
    gold = "x" * 100
    # 49 substitutions: NL = 0.49, similarity 0.51 >= 0.5 -> kept.
    assert anls("y" * 49 + "x" * 51, [gold]) == pytest.approx(0.51)
    # 51 substitutions: similarity 0.49 < 0.5 -> 0 (a wrong answer, not a misread right one).
    assert anls("y" * 51 + "x" * 49, [gold]) == 0.0
    # Exactly at the threshold the official script keeps the similarity (1 - NL < 0.5 is what scores 0).
    assert anls("y" * 50 + "x" * 50, [gold]) == pytest.approx(0.5)


def test_anls_case_whitespace_and_best_answer():
    assert anls("  Dear   DR. Lobo ", ["dear dr. lobo"]) == 1.0
    # One edit in 10 characters against the second answer: 0.9; the first answer is far off.
    assert anls("1/8/93 pmx", ["something else", "1/8/93 pm."]) == pytest.approx(0.9)
    assert anls("", ["abc"]) == 0.0


# --- ChartQA relaxed accuracy --------------------------------------------------------------------

@pytest.mark.parametrize("target, prediction, correct", [
    ("50", "52.5", True),     # |52.5 - 50| / 50 = 0.05: at the 5% limit
    ("50", "47.5", True),
    ("50", "52.6", False),    # 5.2%
    ("50", "47.4", False),
    ("1200", "1250", True),   # 4.2%
    ("20%", "0.2", True),     # "x%" reads as x / 100
    ("20%", "20", False),
    ("0", "0", True),         # a gold 0 is compared as text
    ("0", "0.0", False),
    ("Mexico", "mexico", True),
    ("Mexico", "Mexico City", False),
    ("2017", "2018", True),   # a year is a number too: 0.05% off
])
def test_relaxed_correctness(target, prediction, correct):
    assert relaxed_correctness(target, prediction) is correct


def test_relaxed_accuracy_any_target():
    assert relaxed_accuracy("10.4", ["100", "10"]) == 1.0
    assert relaxed_accuracy("10.6", ["100", "10"]) == 0.0


# --- POPE ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"),
    ("Yes, there is a dog in the image.", "yes"),
    ("No", "no"),
    ("No, there is no dog.", "no"),
    ("There is not a dog in the image.", "no"),
    ("The answer is no", "no"),
    ("Nope", "yes"),                          # only the words No / no / not mean no
    ("Yes. There is no cat, though.", "yes"),  # only the first sentence counts
    ("I can't tell", "yes"),
])
def test_pope_parsing(text, parsed):
    assert parse_pope_answer(text) == parsed


def test_pope_all_yes():
    labels = ["yes", "yes", "yes", "no", "no"]
    m = pope_metrics(["Yes"] * 5, labels)
    # TP = 3, FP = 2, TN = FN = 0.
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(2 * 0.6 * 1.0 / 1.6)  # 0.75
    assert m["yes_ratio"] == 1.0


def test_pope_mixed_and_all_no():
    m = pope_metrics(["yes", "no", "no", "yes"], ["yes", "yes", "no", "no"])
    assert m == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5}
    m = pope_metrics(["no"] * 4, ["yes", "yes", "no", "no"])
    assert m == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}


# --- MME ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"), ("no", "no"), ("Yes, it is.", "yes"), ("No, it is not.", "no"),
    ("There is a cat", "other"), ("Not sure", "no"),
])
def test_mme_parsing(text, parsed):
    assert parse_mme_answer(text) == parsed


def test_mme_accuracy_plus():
    # Image a: both right. Image b: one of two right. Image c: both wrong ("other" is wrong).
    images = ["a", "a", "b", "b", "c", "c"]
    labels = ["Yes", "No", "Yes", "No", "Yes", "No"]
    preds = ["yes", "No.", "Yes", "yes", "I see", "yes"]
    m = mme_subtask_metrics(images, preds, labels)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["accuracy_plus"] == pytest.approx(1 / 3)
    assert m["score"] == pytest.approx(100 * (1 / 2 + 1 / 3))


def test_mme_totals():
    totals = mme_totals({"existence": 125.0, "OCR": 150.0, "code_reasoning": 100.0})
    assert totals == {"perception": 275.0, "cognition": 100.0, "total": 375.0}


# --- exact match --------------------------------------------------------------------------------

def test_exact_match():
    assert exact_match(" Red ", ["red"]) == 1.0
    assert exact_match("dark  blue", ["Dark Blue"]) == 1.0
    assert exact_match("Red.", ["red"]) == 1.0
    assert exact_match("red car", ["red"]) == 0.0
    assert exact_match("3.5", ["3"]) == 0.0
    assert exact_match("3", ["three", "3"]) == 1.0


# --- aggregation per benchmark ------------------------------------------------------------------

def test_synthetic_exact_match_per_category():
    qs = [Question("1", "q", ("red",), categories=("shapes",)), Question("2", "q", ("blue",), categories=("shapes",)),
          Question("3", "q", ("cat",), categories=("text",))]
    score = get_benchmark("synthetic").score(qs, {"1": "red", "2": "green", "3": "cat"})
    assert score.by_category() == {"shapes": 0.5, "text": 1.0, "overall": pytest.approx(2 / 3)}


def test_docvqa_question_in_two_categories():
    qs = [Question("1", "q", ("abc",), categories=("form", "handwritten")), Question("2", "q", ("xyz",), categories=("form",))]
    score = get_benchmark("docvqa").score(qs, {"1": "abc", "2": "nope"})
    assert score.categories["form"]["anls"] == 0.5
    assert score.categories["handwritten"]["anls"] == 1.0
    assert score.overall["anls"] == 0.5


def test_pope_headline_is_mean_over_splits():
    qs = [Question(f"r{i}", "q", (label,), categories=("random",)) for i, label in enumerate(["yes", "no"])]
    qs += [Question(f"a{i}", "q", (label,), categories=("adversarial",)) for i, label in enumerate(["yes", "no"])]
    preds = {"r0": "yes", "r1": "no", "a0": "yes", "a1": "yes"}
    score = get_benchmark("pope").score(qs, preds)
    assert score.categories["random"]["f1"] == 1.0
    assert score.categories["adversarial"]["f1"] == pytest.approx(2 / 3)  # precision 0.5, recall 1
    assert score.overall["f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_mme_score_per_subtask_and_totals():
    qs = [Question(f"existence/{i}", "q", (a,), images=(img,), categories=("existence",))
          for i, (img, a) in enumerate([("x.jpg", "Yes"), ("x.jpg", "No")])]
    qs += [Question(f"code_reasoning/{i}", "q", (a,), images=(img,), categories=("code_reasoning",))
           for i, (img, a) in enumerate([("y.png", "Yes"), ("y.png", "No")])]
    preds = {"existence/0": "Yes", "existence/1": "No", "code_reasoning/0": "Yes", "code_reasoning/1": "Yes"}
    score = get_benchmark("mme").score(qs, preds)
    assert score.categories["existence"]["score"] == 200.0
    assert score.categories["code_reasoning"]["score"] == 50.0  # accuracy 1/2, accuracy+ 0
    assert score.overall["perception"] == 200.0 and score.overall["cognition"] == 50.0
    assert score.by_category()["overall"] == 250.0


def test_scoring_refuses_missing_answers():
    from runtime.eval.questions import BenchmarkDataError

    with pytest.raises(BenchmarkDataError, match="1 of 1 questions have no answer"):
        get_benchmark("textvqa").score([Question("1", "q", ("a",))], {})


def test_runtime_eval_loads_no_torch():
    """The scoring side is runtime: an edge box without torch, transformers or matplotlib can use it."""
    import subprocess
    import sys

    code = ("import sys, runtime.eval.cli, runtime.eval.compare; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'matplotlib', 'models')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
