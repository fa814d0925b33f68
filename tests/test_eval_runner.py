"""The runner on the PyTorch oracle (tiny EVE checkpoint): answers equal the oracle's own, batches,
resume after an interruption, and refusal of results files from another run."""

import json

import pytest
from PIL import Image

from models.engines import torch_pipeline
from runtime.eval.benchmarks import get_benchmark
from runtime.eval.predictors import GeneratePredictor
from runtime.eval.questions import BenchmarkDataError
from runtime.eval.runner import ResultsFile, answer_questions, category_scores, greedy, run_benchmark

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220)}


def write_synthetic_set(folder, n=6):
    """A few samples in the training generator's LLaVA layout: test.json + images/test/*.png."""
    (folder / "images" / "test").mkdir(parents=True)
    records = []
    for i in range(n):
        name = list(COLOURS)[i % 3]
        image = f"images/test/{i:06d}.png"
        Image.new("RGB", (40 + 8 * i, 32), COLOURS[name]).save(folder / image)
        question, answer, category = (("What colour is the shape?", name, "shapes/colour") if i % 2 == 0
                                      else ("How many shapes are there?", "1", "shapes/count"))
        records.append({"id": f"test-{i:06d}", "image": image, "category": category,
                        "conversations": [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]})
    (folder / "test.json").write_text(json.dumps(records))
    return folder / "test.json"


class Interrupted(Exception):
    pass


class Recording:
    """Wraps a predictor: records the batches it is asked for, and can fail after `fail_after` answers."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.name, self.fail_after = inner, inner.name, fail_after
        self.batches = []

    def answer(self, requests, params):
        if self.fail_after is not None and sum(map(len, self.batches)) >= self.fail_after:
            raise Interrupted
        self.batches.append(list(requests))
        return self.inner.answer(requests, params)


@pytest.fixture(scope="module")
def oracle(tiny_eve_dir):
    return GeneratePredictor("torch", torch_pipeline(tiny_eve_dir).generate)


@pytest.fixture
def data(tmp_path):
    return write_synthetic_set(tmp_path / "synthetic")


def test_answers_are_the_oracles_and_batches_do_not_change_them(oracle, data, tmp_path):
    questions = get_benchmark("synthetic").read(data)
    params = greedy(4)
    direct = {q.question_id: oracle.generate(q.text, [q.image], params).strip() for q in questions}
    recorder = Recording(oracle)
    batched = answer_questions(recorder, questions, params, batch_size=4, progress=False)
    assert batched == direct
    assert [len(b) for b in recorder.batches] == [4, 2]
    # The prompt reaching the model is the question as the training data asks it.
    assert recorder.batches[0][0].prompt == "What colour is the shape?"


def test_results_file_and_resume_after_interruption(oracle, data, tmp_path):
    results = tmp_path / "answers.jsonl"
    reference = run_benchmark(oracle, "synthetic", data, params=greedy(4), progress=False)

    crashing = Recording(oracle, fail_after=2)
    with pytest.raises(Interrupted):
        run_benchmark(crashing, "synthetic", data, results=results, params=greedy(4), progress=False)
    lines = results.read_text().splitlines()
    assert len(lines) == 1 + 2  # header + the two answers given before the interruption

    resumed = Recording(oracle)
    score = run_benchmark(resumed, "synthetic", data, results=results, params=greedy(4), progress=False)
    assert sum(map(len, resumed.batches)) == 4  # only the questions left
    assert score.to_dict() == reference.to_dict()
    assert set(score.categories) == {"shapes/colour", "shapes/count"}
    assert len(results.read_text().splitlines()) == 1 + 6


def test_a_half_written_last_line_is_redone(oracle, data, tmp_path):
    results = tmp_path / "answers.jsonl"
    run_benchmark(oracle, "synthetic", data, results=results, limit=3, params=greedy(4), progress=False)
    with results.open("a") as f:
        f.write('{"question_id": "test-000003", "pro')  # killed mid-write
    again = Recording(oracle)
    run_benchmark(again, "synthetic", data, results=results, params=greedy(4), progress=False)
    assert [r.prompt for b in again.batches for r in b] == ["How many shapes are there?", "What colour is the shape?",
                                                            "How many shapes are there?"]
    records = [json.loads(line) for line in results.read_text().splitlines()[1:]]
    assert [r["question_id"] for r in records] == [f"test-{i:06d}" for i in range(6)]


def test_results_from_another_run_are_refused(oracle, data, tmp_path):
    results = tmp_path / "answers.jsonl"
    run_benchmark(oracle, "synthetic", data, results=results, limit=2, params=greedy(4), progress=False)
    with pytest.raises(BenchmarkDataError, match="written by another run"):
        run_benchmark(oracle, "synthetic", data, results=results, params=greedy(8), progress=False)
    other = write_synthetic_set(tmp_path / "other", n=2)
    records = json.loads(other.read_text())
    records[0]["conversations"][0]["value"] = "<image>\nWhich bar is the highest?"
    other.write_text(json.dumps(records))
    with pytest.raises(BenchmarkDataError, match="not in this question set"):
        run_benchmark(oracle, "synthetic", other, results=results, params=greedy(4), progress=False)


def test_missing_images_are_reported_before_any_work(oracle, data):
    (data.parent / "images" / "test" / "000002.png").unlink()
    with pytest.raises(BenchmarkDataError, match="1 of 6 images not found"):
        run_benchmark(oracle, "synthetic", data, params=greedy(4), progress=False)


def test_category_scores(oracle, data):
    scores = category_scores(oracle, "synthetic", data=data, params=greedy(4), progress=False)
    assert set(scores) == {"shapes/colour", "shapes/count", "overall"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_results_header_round_trips(tmp_path):
    header = ResultsFile(tmp_path / "a.jsonl", "synthetic", "torch", greedy(4))
    assert header.load([]) == {}
    assert ResultsFile(tmp_path / "a.jsonl", "synthetic", "torch", greedy(4)).load([]) == {}
