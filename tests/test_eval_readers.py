"""Readers of each benchmark's files in the layout their authors distribute, on tiny hand-written copies."""

import json

import pytest

from runtime.eval.benchmarks import get_benchmark
from runtime.eval.questions import BenchmarkDataError
from runtime.eval.readers import SHORT_ANSWER


def test_textvqa(tmp_path):
    annotation = {"dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [
        {"question": "what brand is the phone?", "image_id": "0054c91397f2fe05", "question_id": 34602,
         "answers": ["nokia"] * 9 + ["Nokia"], "set_name": "val"},
    ]}
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps(annotation))
    [q] = get_benchmark("textvqa").read(path)
    assert q.question_id == "34602"
    assert q.text == f"what brand is the phone?\n{SHORT_ANSWER}"
    assert len(q.answers) == 10
    assert q.image == str(tmp_path / "train_images" / "0054c91397f2fe05.jpg")


def test_docvqa(tmp_path):
    annotation = {"dataset_name": "docvqa", "dataset_split": "val", "data": [
        {"questionId": 49153, "question": "What is the 'actual' value per 1000, during the year 1975?",
         "question_types": ["figure/diagram"], "image": "documents/pybv0228_81.png", "docId": 14465,
         "answers": ["0.28"], "data_split": "val"},
    ]}
    path = tmp_path / "val_v1.0.json"
    path.write_text(json.dumps(annotation))
    [q] = get_benchmark("docvqa").read(path, images=tmp_path / "imgs")
    assert (q.question_id, q.answers, q.categories) == ("49153", ("0.28",), ("figure/diagram",))
    assert q.image == str(tmp_path / "imgs" / "documents" / "pybv0228_81.png")


def test_chartqa_folder_of_both_splits(tmp_path):
    for split, label in (("human", "Yes"), ("augmented", "47")):
        rows = [{"imgname": f"{split}.png", "query": "Is the value above 40?", "label": label}]
        (tmp_path / f"test_{split}.json").write_text(json.dumps(rows))
    questions = get_benchmark("chartqa").read(tmp_path)
    assert {q.question_id for q in questions} == {"human/0", "augmented/0"}
    assert {q.categories[0] for q in questions} == {"human", "augmented"}
    assert all(q.image == str(tmp_path / "png" / f"{q.categories[0]}.png") for q in questions)


def test_pope_json_lines(tmp_path):
    for split in ("random", "adversarial"):
        lines = [{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"},
                 {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dog in the image?", "label": "no"}]
        (tmp_path / f"coco_pope_{split}.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    questions = get_benchmark("pope").read(tmp_path)
    assert [q.question_id for q in questions] == ["adversarial/1", "adversarial/2", "random/1", "random/2"]
    assert questions[1].answers == ("no",)
    assert questions[0].text == f"Is there a snowboard in the image?\n{SHORT_ANSWER}"


def test_mme_subtask_files(tmp_path):
    results = tmp_path / "eval_tool" / "Your_Results"
    results.mkdir(parents=True)
    (results / "artwork.txt").write_text(
        "10002.jpg\tIs this artwork created by donatello? Please answer yes or no.\tYes\n"
        "10002.jpg\tIs this artwork created by van gogh? Please answer yes or no.\tNo\n")
    (results / "code_reasoning.txt").write_text("0020.png\tThe output is 3? Please answer yes or no.\tNo\n")
    images = tmp_path / "MME_Benchmark_release_version"
    (images / "artwork" / "images").mkdir(parents=True)
    (images / "artwork" / "images" / "10002.jpg").write_bytes(b"x")
    questions = get_benchmark("mme").read(results, images=images)
    assert [q.question_id for q in questions] == ["artwork/1", "artwork/2", "code_reasoning/1"]
    assert questions[0].text == f"Is this artwork created by donatello?\n{SHORT_ANSWER}"
    assert questions[0].image == str(images / "artwork" / "images" / "10002.jpg")  # five subtasks nest images/
    assert questions[2].image == str(images / "code_reasoning" / "0020.png")
    assert questions[2].answers == ("No",)


def test_llava_jsonl_for_any_benchmark(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text(
        json.dumps({"question_id": 7, "image": "a.jpg", "text": "What is it?\nAnswer briefly.", "answers": ["cat", "cat"], "category": "animals"}) + "\n"
        + json.dumps({"question_id": "x", "image": "b.jpg", "text": "Is it red?", "label": "no"}) + "\n")
    questions = get_benchmark("textvqa").read(path)
    assert questions[0].text == "What is it?\nAnswer briefly."  # used as written
    assert (questions[0].question_id, questions[0].categories) == ("7", ("animals",))
    assert questions[1].answers == ("no",) and questions[1].categories == ("all",)


def test_synthetic_conversations(tmp_path):
    records = [{"id": "shapes-0", "image": "images/0.png", "category": "shapes",
                "conversations": [{"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": "red"}]}]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(records))
    [q] = get_benchmark("synthetic").read(path)
    assert (q.question_id, q.text, q.answers, q.categories) == ("shapes-0", "What colour is the square?", ("red",), ("shapes",))
    assert q.image == str(tmp_path / "images" / "0.png")


@pytest.mark.parametrize("content, message", [
    ('{"data": [{"question": "q", "image_id": "i", "answers": ["a"]}]}', "missing field 'question_id'"),
    ('{"data": [{"question_id": 1, "question": "q", "image_id": "i", "answers": []}]}', "non-empty"),
    ('[1, 2]', "expected an object with a 'data' list"),
    ('{"data": [', "not valid JSON"),
    ('{"data": []}', "no questions found"),
    ('{"data": [{"question_id": 1, "question": "q", "image_id": "i", "answers": ["a"]},'
     ' {"question_id": 1, "question": "q2", "image_id": "i", "answers": ["b"]}]}', "appears twice"),
])
def test_bad_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(content)
    with pytest.raises(BenchmarkDataError, match=message):
        get_benchmark("textvqa").read(path)


def test_missing_data_and_unknown_benchmark(tmp_path):
    with pytest.raises(BenchmarkDataError, match="no such file"):
        get_benchmark("docvqa").read(tmp_path / "nope.json")
    with pytest.raises(BenchmarkDataError, match="no coco_pope_"):
        get_benchmark("pope").read(tmp_path)
    with pytest.raises(BenchmarkDataError, match="unknown benchmark 'nope'"):
        get_benchmark("nope")
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "text": "q"}\n')
    with pytest.raises(BenchmarkDataError, match="no reference answers"):
        get_benchmark("pope").read(bad)


def test_benchmarks_that_need_their_own_files_refuse_a_llava_question_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "image": "a.jpg", "text": "Which?\\nA. x\\nB. y", "answer": "A"}\n')
    assert get_benchmark("gqa").read(path)[0].answers == ("A",)  # GQA needs nothing more
    with pytest.raises(BenchmarkDataError, match="mmbench is scored from its own files"):
        get_benchmark("mmbench").read(path)


def test_help_lists_every_benchmark(capsys):
    from runtime.eval.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("textvqa", "vqav2", "gqa", "vizwiz", "docvqa", "infovqa", "chartqa", "ocrbench", "scienceqa_img",
                 "seed_image", "mmbench", "ai2d", "mmmu", "mathvista", "realworldqa", "mmvp", "pope", "mme", "synthetic"):
        assert name in text
    assert "--server URL" in text and "default: 1)" in text
