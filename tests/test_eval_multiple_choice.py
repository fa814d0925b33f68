"""The multiple-choice benchmarks (ScienceQA-IMG, SEED-Bench, MMBench, AI2D, MMVP, RealWorldQA): each
reader on a small hand-made copy of the benchmark's own files, each letter rule on the tricky cases of
the script it follows, and each score worked out by hand."""

import base64
import io
import json

import pytest
from PIL import Image

from runtime.eval.benchmarks import get_benchmark
from runtime.eval.mmbench import mmbench_letter
from runtime.eval.multiple_choice import (
    ANSWER_WITH_LETTER,
    ai2d_matches,
    first_character,
    mmvp_letter,
    multiple_choice_prompt,
    ranked_letter,
    scienceqa_letter,
)
from runtime.eval.questions import BenchmarkDataError


def png(colour=(200, 30, 30), size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def score_of(benchmark, questions, answers):
    return get_benchmark(benchmark).score(questions, dict(zip([q.question_id for q in questions], answers)))


def test_the_llava_prompt():
    assert multiple_choice_prompt("Which is red?", ["apple", "sky"], "Context: a fruit bowl") == (
        "Context: a fruit bowl\nWhich is red?\nA. apple\nB. sky\n"
        "Answer with the option's letter from the given choices directly.")


# --- ScienceQA-IMG -------------------------------------------------------------------------------

@pytest.mark.parametrize("response, letter", [
    ("B", "B"),
    ("B. sky", "B"),                  # a letter, a period and a space
    ("B.sky", None),                  # ... the space is required
    ("The answer is C.", "C"),
    ("The answer is A. The answer is B.", None),  # two "The answer is" -> FAILED
    ("b", None),                      # case matters
    ("E", None),                      # a letter past the question's options
    ("(B)", None),
])
def test_scienceqa_letter(response, letter):
    assert scienceqa_letter(response, n_choices=3) == letter


@pytest.fixture
def scienceqa_dir(tmp_path):
    problems = {
        "7": {"question": "Which animal is a mammal?", "choices": ["trout", "otter", "frog"], "answer": 1,
              "hint": "Mammals have fur.", "image": "image.png", "subject": "natural science", "grade": "grade4",
              "split": "test"},
        "8": {"question": "What is the capital of Utah?", "choices": ["Denver", "Salt Lake City"], "answer": 1,
              "hint": "", "image": "image.png", "subject": "social science", "grade": "grade9", "split": "test"},
        "9": {"question": "Which word rhymes?", "choices": ["cat", "dog"], "answer": 0, "hint": "", "image": None,
              "subject": "language science", "grade": "grade2", "split": "test"},
        "10": {"question": "Train only", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
               "subject": "natural science", "grade": "grade1", "split": "train"},
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"train": ["10"], "test": ["7", "8", "9"]}))
    return tmp_path


def test_scienceqa_reader_keeps_test_questions_with_images(scienceqa_dir):
    questions = get_benchmark("scienceqa_img").read(scienceqa_dir)
    assert [q.question_id for q in questions] == ["7", "8"]  # 9 has no image, 10 is train
    q = questions[0]
    assert q.text == ("Context: Mammals have fur.\nWhich animal is a mammal?\nA. trout\nB. otter\nC. frog\n"
                      + ANSWER_WITH_LETTER)
    assert questions[1].text.startswith("What is the capital of Utah?\nA. Denver")  # no hint, no "Context:"
    assert q.answers == ("B",) and q.choices == ("trout", "otter", "frog")
    assert q.images == (str(scienceqa_dir / "images" / "test" / "7" / "image.png"),)
    assert q.categories == ("natural science", "G1-6") and questions[1].categories == ("social science", "G7-12")


def test_scienceqa_score(scienceqa_dir):
    questions = get_benchmark("scienceqa_img").read(scienceqa_dir / "problems.json")
    score = score_of("scienceqa_img", questions, ["B. otter", "b"])
    assert score.overall["accuracy"] == 0.5
    assert score.categories["G1-6"]["accuracy"] == 1.0 and score.categories["G7-12"]["accuracy"] == 0.0


# --- SEED-Bench ----------------------------------------------------------------------------------

def test_seed_reader_and_first_character_rule(tmp_path):
    document = {"question_type": {"Scene Understanding": 1, "Instance Counting": 5, "Action Recognition": 10},
                "questions": [
                    {"answer": "A", "choice_a": "One", "choice_b": "Two", "choice_c": "Three", "choice_d": "Four",
                     "data_id": "1454426_2591111986", "data_type": "image", "question": "How many towels?",
                     "question_id": "101669", "question_type_id": 5},
                    {"answer": "C", "choice_a": "a", "choice_b": "b", "choice_c": "c", "choice_d": "d",
                     "data_id": "scene.jpg", "data_type": "image", "question": "What scene?",
                     "question_id": "1", "question_type_id": 1},
                    {"answer": "B", "choice_a": "a", "choice_b": "b", "choice_c": "c", "choice_d": "d",
                     "data_id": "v.mp4", "data_type": "video", "question": "What happens?", "question_id": "2",
                     "question_type_id": 10}]}
    path = tmp_path / "SEED-Bench.json"
    path.write_text(json.dumps(document))
    questions = get_benchmark("seed_image").read(path)
    assert [q.question_id for q in questions] == ["101669", "1"]  # the video question is skipped
    assert questions[0].text == f"How many towels?\nA. One\nB. Two\nC. Three\nD. Four\n{ANSWER_WITH_LETTER}"
    assert questions[0].images == (str(tmp_path / "SEED-Bench-image" / "1454426_2591111986"),)
    assert questions[0].categories == ("Instance Counting",)
    assert first_character("  c) three") == "C"
    score = score_of("seed_image", questions, ["A. One", "The answer is C"])  # "The..." reads as T
    assert score.overall["accuracy"] == 0.5
    assert score.by_category() == {"Instance Counting": 1.0, "Scene Understanding": 0.0, "overall": 0.5}


# --- MMBench -------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, letter", [
    ("B", "B"),
    ("B. dog", "B"),                          # "B." form
    ("(C)", "C"),
    ("The answer is A", None),                # a lone A among more than 3 words may be the article: no letter
    ("A bird sits on a mat", "C"),            # ... so the option text decides
    ("A B", None),                            # two lone letters
    ("It is a dog", "B"),                     # no letter: the one option whose text appears
    ("dog or cat", None),                     # two options' texts
    ("E", "E"),                               # the evaluator accepts E even with four options
])
def test_mmbench_letter(answer, letter):
    assert mmbench_letter(answer, ("cat", "dog", "bird", "fish")) == letter


def mmbench_tsv(path, rows):
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "comment", "split"]
    lines = ["\t".join(header)] + ["\t".join(str(row.get(k, "")) for k in header) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mmbench_makes_rotations_and_scores_circularly(tmp_path):
    image = base64.b64encode(png()).decode()
    rows = [
        {"index": 0, "question": "What animal is it?", "hint": "nan", "A": "cat", "B": "dog", "C": "bird",
         "D": "nan", "answer": "B", "category": "image_topic", "image": image, "l2-category": "coarse_perception",
         "split": "dev"},
        {"index": 1, "question": "Which is bigger?", "hint": "Look closely.", "A": "left", "B": "right",
         "answer": "A", "category": "spatial", "image": "0", "l2-category": "relation_reasoning", "split": "dev"},
    ]
    path = mmbench_tsv(tmp_path / "mmbench_dev.tsv", rows)
    questions = get_benchmark("mmbench").read(path)
    assert [q.question_id for q in questions] == ["0", "1000000", "2000000", "1", "1000001"]
    # Rotation k shows the options shifted k places; the answer letter follows the right option.
    assert [q.choices for q in questions[:3]] == [("cat", "dog", "bird"), ("dog", "bird", "cat"), ("bird", "cat", "dog")]
    assert [q.answers[0] for q in questions[:3]] == ["B", "A", "C"]
    assert questions[3].text == f"Look closely.\nWhich is bigger?\nA. left\nB. right\n{ANSWER_WITH_LETTER}"
    assert questions[0].text.startswith("What animal is it?\nA. cat")  # "nan" hint left out
    # The image is written once; row 1 shares row 0's ("0" names the row).
    assert questions[0].images == questions[3].images == (str(tmp_path / "mmbench_dev_images" / "0.png"),)
    with Image.open(questions[0].images[0]) as written:
        assert written.size == (8, 6)
    # Question 0: right in rotations 0 and 2 only -> wrong. Question 1: right in both ("left" names B, the
    # right option once rotated) -> right.
    score = score_of("mmbench", questions, ["B", "B", "C", "A. left", "left"])
    assert score.overall["circular_accuracy"] == 0.5
    assert score.overall["question_accuracy"] == pytest.approx(4 / 5)
    assert score.categories["coarse_perception"]["circular_accuracy"] == 0.0
    assert score.categories["relation_reasoning"]["circular_accuracy"] == 1.0
    assert score.categories["relation_reasoning"]["count"] == 1  # counted per question, not per rotation


def test_mmbench_uses_the_tsvs_own_circular_copies(tmp_path):
    image = base64.b64encode(png()).decode()
    rows = [{"index": 5, "question": "Q?", "A": "x", "B": "y", "answer": "A", "image": image, "category": "c"},
            {"index": 1000005, "question": "Q?", "A": "y", "B": "x", "answer": "B", "image": image, "category": "c"}]
    questions = get_benchmark("mmbench").read(mmbench_tsv(tmp_path / "dev.tsv", rows))
    assert [(q.question_id, q.choices, q.answers) for q in questions] == [
        ("5", ("x", "y"), ("A",)), ("1000005", ("y", "x"), ("B",))]


def test_mmbench_refuses_the_test_split(tmp_path):
    rows = [{"index": 0, "question": "Q?", "A": "x", "B": "y", "answer": "nan", "image": "aGk="}]
    with pytest.raises(BenchmarkDataError, match="test split has no answers"):
        get_benchmark("mmbench").read(mmbench_tsv(tmp_path / "test.tsv", rows))


# --- AI2D ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("response, right", [
    ("B", True), ("b", True), ("B.", True), ("(B)", True), ("B. a frog", True),
    ("The answer is B", False),  # no leading "X." and not the letter alone
    ("C", False),
])
def test_ai2d_rule(response, right):
    assert ai2d_matches(response, "B") is right


def test_ai2d_reader_reads_the_test_split(tmp_path):
    (tmp_path / "questions").mkdir()
    for image_id, question in (("4", "What eats the frog?"), ("7", "Train question?")):
        (tmp_path / "questions" / f"{image_id}.png.json").write_text(json.dumps({
            "imageName": f"{image_id}.png",
            "questions": {question: {"abcLabel": False, "answerTexts": ["snake", "grass", "sun", "fly"],
                                     "correctAnswer": 0, "questionId": f"{image_id}.png-0"}}}))
    (tmp_path / "ai2d_test_ids.csv").write_text("4\n")
    (tmp_path / "categories.json").write_text(json.dumps({"4.png": "foodChainsWebs", "7.png": "lifeCycles"}))
    [q] = get_benchmark("ai2d").read(tmp_path)
    assert (q.question_id, q.answers, q.categories) == ("4.png-0", ("A",), ("foodChainsWebs",))
    assert q.text == f"What eats the frog?\nA. snake\nB. grass\nC. sun\nD. fly\n{ANSWER_WITH_LETTER}"
    assert q.images == (str(tmp_path / "images" / "4.png"),)
    (tmp_path / "ai2d_test_ids.csv").unlink()
    with pytest.raises(BenchmarkDataError, match="ai2d_test_ids.csv"):
        get_benchmark("ai2d").read(tmp_path)


# --- MMVP ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("response, letter", [
    ("A", "A"), ("(b)", "B"), ("B.", "B"), ("a) open", "A"), ("The answer is B", "B"), ("option a", "A"),
    ("Bears are brown", "B"),  # the first character, as lmms-eval's last resort
    ("Closed", ""),
])
def test_mmvp_letter(response, letter):
    assert mmvp_letter(response) == letter


def test_mmvp_pairs(tmp_path):
    rows = ['Index,Question,Options,Correct Answer',
            '1,Are the eyes open?,(a) Open (b) Closed,(a)',
            '2,Are the eyes open?,(a) Open (b) Closed,(b)',
            '3,Is the dog facing left?,(a) Yes (b) No,(a)',
            '4,Is the dog facing left?,(a) Yes (b) No,(b)']
    (tmp_path / "Questions.csv").write_text("\n".join(rows) + "\n")
    questions = get_benchmark("mmvp").read(tmp_path)
    assert questions[0].text == f"Are the eyes open?\nA. Open\nB. Closed\n{ANSWER_WITH_LETTER}"
    assert questions[0].images == (str(tmp_path / "MMVP Images" / "1.jpg"),)
    assert [q.group for q in questions] == ["0", "0", "1", "1"]
    # Pair 0 both right; pair 1 one right: pair accuracy 1/2, question accuracy 3/4.
    score = score_of("mmvp", questions, ["A", "(b) Closed", "a", "a"])
    assert score.overall["pair_accuracy"] == 0.5
    assert score.overall["question_accuracy"] == 0.75


# --- RealWorldQA ---------------------------------------------------------------------------------

@pytest.mark.parametrize("response, letter", [
    ("B", "B"),
    ("(C)", "C"),
    ("The answer is C.", "C"),          # ends with a standalone C: the top-ranked form
    ("I think A is wrong; the correct answer is D", "D"),
    ("C. The car is red", "C"),          # starts with a standalone letter
    ("Because", "B"),                     # last resort: a capital letter anywhere, even inside a word
    ("yes", ""),
    ("", ""),
])
def test_ranked_letter(response, letter):
    assert ranked_letter(response, ("A", "B", "C", "D")) == letter


def test_realworldqa_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="RealWorldQA is distributed as parquet: pip install pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    table = pa.table({
        "image": [{"bytes": png(), "path": None}, {"bytes": png((0, 0, 255)), "path": None}],
        "question": ["Which way is the arrow?\nA. left\nB. right\nPlease answer directly with only the letter of "
                     "the correct option and nothing else.", "How many cars are there?"],
        "answer": ["B", "2"],
    })
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    questions = get_benchmark("realworldqa").read(tmp_path)
    assert questions[0].text.endswith("nothing else.")  # sent as written
    assert questions[0].images == (str(tmp_path / "realworldqa_images" / "0.png"),)
    assert [q.categories for q in questions] == [("multiple choice",), ("open",)]
    score = score_of("realworldqa", questions, ["(B) right", "2."])
    assert score.overall["accuracy"] == 1.0
    assert score_of("realworldqa", questions, ["A", "two"]).overall["accuracy"] == 0.0
