"""The benchmarks with free answers (GQA, VizWiz, InfoVQA, OCRBench, MMMU, MathVista): each reader on a
small hand-made copy of the benchmark's own files, and each score worked out by hand from the official
script, its tricky cases included."""

import io
import json

import pytest
from PIL import Image

from runtime.eval.benchmarks import get_benchmark
from runtime.eval.mathvista import extract_answer, normalize_answer
from runtime.eval.mmmu import open_match, parse_choice, parse_open
from runtime.eval.multiple_choice import ANSWER_WITH_LETTER
from runtime.eval.readers import SHORT_ANSWER
from runtime.eval.vizwiz import unanswerable_metrics


def png(colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def score_of(benchmark, questions, answers):
    return get_benchmark(benchmark).score(questions, dict(zip([q.question_id for q in questions], answers)))


# --- GQA -----------------------------------------------------------------------------------------

def test_gqa(tmp_path):
    questions = {
        "201307251": {"imageId": "n161313", "question": "Is it overcast?", "answer": "no", "isBalanced": True,
                      "types": {"structural": "verify", "semantic": "attr", "detailed": "weatherVerify"}},
        "201640614": {"imageId": "n235859", "question": "Who is wearing the dress?", "answer": "woman",
                      "isBalanced": True, "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
        "2": {"imageId": "n1", "question": "Unbalanced?", "answer": "yes", "isBalanced": False,
              "types": {"structural": "verify", "semantic": "obj"}},
    }
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps(questions))
    qs = get_benchmark("gqa").read(path)
    assert [q.question_id for q in qs] == ["201307251", "201640614"]  # eval.py scores balanced questions only
    assert qs[0].text == f"Is it overcast?\n{SHORT_ANSWER}"
    assert qs[0].images == (str(tmp_path / "images" / "n161313.jpg"),)
    assert qs[1].categories == ("structural/query", "semantic/rel", "open")
    # "No." -> "no" (trailing period dropped, lower-cased); "the woman" keeps its article: wrong.
    score = score_of("gqa", qs, ["No.", "the woman"])
    assert score.overall["accuracy"] == 0.5
    assert score.categories["binary"]["accuracy"] == 1.0 and score.categories["open"]["accuracy"] == 0.0
    assert score_of("gqa", qs, ["no", "Woman..."]).overall["accuracy"] == 1.0


# --- VizWiz --------------------------------------------------------------------------------------

def vizwiz_answers(*answers):
    return [{"answer": a, "answer_confidence": "yes"} for a in answers]


@pytest.fixture
def vizwiz_file(tmp_path):
    records = [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answer_type": "other", "answerable": 1,
         "answers": vizwiz_answers(*(["coca-cola"] * 3 + ["Coca-Cola"] * 3 + ["soda"] * 4))},
        {"image": "VizWiz_val_00000001.jpg", "question": "What color is this?", "answer_type": "unanswerable",
         "answerable": 0, "answers": vizwiz_answers(*(["unanswerable"] * 8 + ["blue"] * 2))},
        {"image": "VizWiz_val_00000002.jpg", "question": "Is it on?", "answer_type": "yes/no", "answerable": 1,
         "answers": vizwiz_answers(*(["yes"] * 10))},
    ]
    path = tmp_path / "val.json"
    path.write_text(json.dumps(records))
    return path


def test_vizwiz_reader(vizwiz_file):
    qs = get_benchmark("vizwiz").read(vizwiz_file)
    assert qs[0].question_id == "VizWiz_val_00000000.jpg"
    assert qs[0].text == ("What is this?\nWhen the provided information is insufficient, respond with "
                          "'Unanswerable'.\nAnswer the question using a single word or phrase.")
    assert qs[0].images == (str(vizwiz_file.parent / "val" / "VizWiz_val_00000000.jpg"),)
    assert len(qs[0].answers) == 10 and qs[1].details == {"answerable": 0}


def test_vizwiz_accuracy_compares_with_the_human_answers_as_written(vizwiz_file):
    qs = get_benchmark("vizwiz").read(vizwiz_file)
    # "Coca-Cola" normalizes to "coca cola", which no human wrote (the evaluator does not normalize them):
    # 0. "Unanswerable." -> "unanswerable", 8 of 10: 1. "Yes" -> 1.
    score = score_of("vizwiz", qs, ["Coca-Cola", "Unanswerable.", "Yes"])
    assert score.categories["other"]["vqa_accuracy"] == 0.0
    assert score.overall["vqa_accuracy"] == pytest.approx(2 / 3)
    # "soda", 4 of 10 humans: every leave-one-out subset keeps 3 or 4 -> 1.
    assert score_of("vizwiz", qs, ["soda", "blue", "no"]).categories["other"]["vqa_accuracy"] == 1.0
    # "blue", 2 of 10: (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    assert score_of("vizwiz", qs, ["soda", "blue", "no"]).categories["unanswerable"]["vqa_accuracy"] == pytest.approx(0.6)
    # One unanswerable question, predicted so, no false alarm: AP 1, F1 1.
    assert score.overall["unanswerable_ap"] == 1.0 and score.overall["unanswerable_f1"] == 1.0


def test_unanswerable_average_precision_by_hand():
    # 4 questions, 2 unanswerable; "unanswerable" predicted for one of them and one answerable one.
    # Threshold 1: precision 1/2, recall 1/2; threshold 0: precision 2/4, recall 1.
    # AP = 1/2 * 1/2 + (1 - 1/2) * 2/4 = 0.5; F1 = 2*1 / (2*1 + 1 + 1) = 0.5.
    m = unanswerable_metrics([True, False, True, False], [True, True, False, False])
    assert m == {"unanswerable_ap": 0.5, "unanswerable_f1": 0.5}
    # Never predicted: AP is the base rate (one threshold, everything positive), F1 0.
    assert unanswerable_metrics([False] * 4, [True, False, False, False]) == {"unanswerable_ap": 0.25, "unanswerable_f1": 0.0}


# --- InfoVQA -------------------------------------------------------------------------------------

def test_infovqa(tmp_path):
    annotation = {"dataset_name": "infographicVQA", "dataset_split": "val", "data": [
        {"questionId": 65718, "question": "What percentage of workers are women?", "image_local_name": "37313.jpeg",
         "answers": ["35%", "35 %"], "answer_type": ["single span"], "evidence": ["Text", "Figure"],
         "operation/reasoning": []}]}
    path = tmp_path / "infographicsVQA_val_v1.0_withQT.json"
    path.write_text(json.dumps(annotation))
    [q] = get_benchmark("infovqa").read(path)
    assert q.images == (str(tmp_path / "infographicsvqa_images" / "37313.jpeg"),)
    assert q.categories == ("answer/single span", "evidence/Text", "evidence/Figure")
    # "35.%" is one edit from "35%" (4 characters): ANLS 0.75.
    score = score_of("infovqa", [q], ["35.%"])
    assert score.overall["anls"] == pytest.approx(0.75)
    assert score.categories["evidence/Figure"]["anls"] == pytest.approx(0.75)


# --- OCRBench ------------------------------------------------------------------------------------

def test_ocrbench(tmp_path):
    records = [
        {"dataset_name": "IIIT5K", "id": 0, "image_path": "IIIT5K/1.png", "question": "what is written in the image?",
         "answers": ["CHINA"], "type": "Regular Text Recognition"},
        {"dataset_name": "HME100k", "id": 1, "image_path": "HME100k/2.jpg",
         "question": "Please write out the expression of the formula in the image using LaTeX format.",
         "answers": "x ^ { 2 }", "type": "Handwritten Mathematical Expression Recognition"},
        {"dataset_name": "HME100k", "id": 2, "image_path": "HME100k/3.jpg", "question": "formula?",
         "answers": ["A + b"], "type": "Handwritten Mathematical Expression Recognition"},
        {"dataset_name": "docVQA", "id": 3, "image_path": "docVQA/4.png", "question": "What is the date?",
         "answers": [1995, "1996"], "type": "Doc-oriented VQA"},
    ]
    (tmp_path / "OCRBench").mkdir()
    path = tmp_path / "OCRBench" / "OCRBench.json"
    path.write_text(json.dumps(records))
    qs = get_benchmark("ocrbench").read(path)
    assert qs[0].images == (str(tmp_path / "OCRBench_Images" / "IIIT5K" / "1.png"),)  # the release's layout
    assert qs[0].text == "what is written in the image?"  # sent as written
    assert qs[3].answers == ("1995", "1996")
    # 0: "china" is in "the word is china." (lower-cased): 1. 1: spaces removed: "x^{2}" in "$x^{2}$": 1.
    # 2: HME keeps case: "A+b" not in "a+b": 0. 3: "1995" in "in 1995": 1.
    score = score_of("ocrbench", qs, ["The word is China.", "$x^{2}$", "a + b", "in 1995"])
    assert score.overall["final_score"] == 3
    assert score.overall["text_recognition"] == 1
    assert score.categories["Handwritten Mathematical Expression Recognition"]["score"] == 1
    assert score.by_category()["overall"] == 3


# --- MMMU ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("response, letter", [
    ("(B)", "B"),
    ("B", "B"),
    ("The answer is (A), not (C).", "C"),       # several bracketed letters: the last one
    ("I pick C or D", "D"),                     # several bare letters: the last one
    ("The correct option is the one with iron in it", "B"),  # over five words: an option's text
    ("iron", None),                             # five words or fewer: no text matching -> random
])
def test_mmmu_choice_parsing(response, letter):
    choices = ("copper", "iron", "zinc", "tin")
    parsed = parse_choice(response, choices, seed="validation_Chemistry_1")
    if letter is None:
        assert parsed in "ABCD"
        assert parsed == parse_choice(response, choices, seed="validation_Chemistry_1")  # reproducible
    else:
        assert parsed == letter


def test_mmmu_open_parsing():
    # The tail after "is" ("1,250", a number once its comma goes), and the numbers found in it: the
    # thousands pattern finds 1,250, and the plain pattern its tail "250" too (MMMU's regexes do).
    assert set(parse_open("The total cost is 1,250.")) == {1250.0, 250.0}
    # After lower-casing, "so the answer is 12.5" is one sentence: tails "the answer is 12.5", "12.5"...
    assert 12.5 in parse_open("We add them. So the answer is 12.5")
    assert open_match(("12.50",), parse_open("so it is 12.5")) is True      # numbers compare as floats
    assert open_match(("Paris",), parse_open("The capital is paris")) is True  # gold text inside the tail
    assert open_match(("a",), parse_open("the answer is b")) is False       # one letter needs its own word
    assert open_match(("0.6", "0.60"), parse_open("0.6")) is True           # a list of right answers


def test_mmmu_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="MMMU is distributed as parquet: pip install pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "Chemistry").mkdir()
    image = {"bytes": png(), "path": "1.png"}
    table = pa.table({
        "id": ["validation_Chemistry_1", "validation_Chemistry_2"],
        "question": ["<image 1> Which metal is shown?", "Compare <image 2> with <image 1>. How many grams?"],
        "options": ["['copper', 'iron']", "[]"],
        "image_1": [image, image],
        "image_2": [None, {"bytes": png((0, 255, 0)), "path": "2.png"}],
        "answer": ["B", "['3', '3.0']"],
        "question_type": ["multiple-choice", "open"],
    })
    pq.write_table(table, tmp_path / "Chemistry" / "validation-00000-of-00001.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "Chemistry" / "dev-00000-of-00001.parquet")  # not read
    qs = get_benchmark("mmmu").read(tmp_path)
    assert [q.question_id for q in qs] == ["validation_Chemistry_1", "validation_Chemistry_2"]
    assert qs[0].text == f"<image 1> Which metal is shown?\nA. copper\nB. iron\n{ANSWER_WITH_LETTER}"
    assert qs[1].text == f"Compare <image 2> with <image 1>. How many grams?\n{SHORT_ANSWER}"
    images = tmp_path / "mmmu_images"
    assert qs[1].images == (str(images / "validation_Chemistry_2_2.png"), str(images / "validation_Chemistry_2_1.png"))
    assert qs[1].answers == ("3", "3.0") and qs[0].categories == ("Science", "Chemistry")
    score = score_of("mmmu", qs, ["(B) iron", "The mass is 3 grams"])
    assert score.overall["accuracy"] == 1.0
    assert score_of("mmmu", qs, ["A", "4"]).by_category() == {"Chemistry": 0.0, "Science": 0.0, "overall": 0.0}


# --- MathVista -----------------------------------------------------------------------------------

def test_mathvista_extraction_and_normalization():
    choices = ("3/11", "8/11", "6/11", "3/5")
    assert normalize_answer(extract_answer("B", choices, "text"), choices, "text", None) == "8/11"
    assert normalize_answer(extract_answer("(C) 6/11", choices, "text"), choices, "text", None) == "6/11"
    # Neither a letter nor an option: the option nearest by edit distance.
    assert normalize_answer(extract_answer("8/12", choices, "text"), choices, "text", None) == "8/11"
    assert normalize_answer(extract_answer("14.", (), "integer"), (), "integer", None) == "14"
    assert normalize_answer(extract_answer("1.25", (), "float"), (), "float", 1) == "1.2"  # Python rounds to even
    assert normalize_answer(extract_answer('The answer is "7".', (), "integer"), (), "integer", None) == "7"
    assert normalize_answer(extract_answer("seven", (), "integer"), (), "integer", None) is None


def test_mathvista(tmp_path):
    problems = {
        "1": {"pid": "1", "question": "How far is the spring compressed?", "image": "images/1.jpg", "choices": None,
              "unit": "cm", "precision": 1.0, "answer": "1.2", "question_type": "free_form", "answer_type": "float",
              "metadata": {"task": "textbook question answering", "skills": ["scientific reasoning"]}},
        "2": {"pid": "2", "question": "Which fraction is shaded?", "image": "images/2.png",
              "choices": ["1/2", "1/3"], "unit": None, "precision": None, "answer": "1/3",
              "question_type": "multi_choice", "answer_type": "text",
              "metadata": {"task": "math word problem", "skills": ["arithmetic reasoning", "algebraic reasoning"]}},
    }
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps(problems))
    qs = get_benchmark("mathvista").read(path)
    assert qs[0].text == ("How far is the spring compressed? (Unit: cm)\n"
                          "Answer the question using a single floating-point number with one decimal place.")
    assert qs[1].text == f"Which fraction is shaded?\nA. 1/2\nB. 1/3\n{ANSWER_WITH_LETTER}"
    assert qs[0].images == (str(tmp_path / "images" / "1.jpg"),)
    assert qs[1].categories == ("task/math word problem", "skill/arithmetic reasoning", "skill/algebraic reasoning")
    score = score_of("mathvista", qs, ["1.24", "B"])
    assert score.overall["accuracy"] == 1.0
    assert score_of("mathvista", qs, ["1.3", "A"]).overall["accuracy"] == 0.0
