"""Scoring a running OpenAI-compatible server: this project's real server on a tiny engine answers every
question as the engine directory does (same prompts, greedy), so both sit on one table; server trouble
is a one-line error."""

import io
import json
import socket

import pytest
from PIL import Image

import evaluate
from runtime.eval.cli import main as eval_main
from runtime.eval.predictors import ServerError, ServerPredictor
from serving_helpers import running_server
from test_eval_runner import write_synthetic_set
from tiny_engines import built_engine


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(the session's tiny EVE engine directory, this project's server running it)."""
    engine_dir = built_engine("eve", tmp_path_factory)[1]
    with running_server(engine_dir, max_batch=4) as server:
        yield engine_dir, server


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_set(tmp_path_factory.mktemp("synthetic"), n=6)


@pytest.fixture(scope="module")
def mmvp(tmp_path_factory):
    """Four MMVP questions (two pairs) with JPEG images, in MMVP's own layout."""
    folder = tmp_path_factory.mktemp("mmvp")
    (folder / "MMVP Images").mkdir()
    for i, colour in enumerate([(220, 30, 30), (30, 70, 220), (30, 170, 50), (240, 240, 240)], 1):
        Image.new("RGB", (48, 40), colour).save(folder / "MMVP Images" / f"{i}.jpg")
    (folder / "Questions.csv").write_text(
        "Index,Question,Options,Correct Answer\n"
        "1,What colour is the shape?,(a) red (b) blue,(a)\n2,What colour is the shape?,(a) red (b) blue,(b)\n"
        "3,Is the image white?,(a) Yes (b) No,(b)\n4,Is the image white?,(a) Yes (b) No,(a)\n")
    return folder


@pytest.fixture(scope="module")
def mmmu(tmp_path_factory):
    """Two MMMU questions in the release's parquet layout, one of them with two images."""
    pa = pytest.importorskip("pyarrow", reason="MMMU is distributed as parquet: pip install pyarrow")
    import pyarrow.parquet as pq

    def png(colour):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    folder = tmp_path_factory.mktemp("mmmu")
    (folder / "Math").mkdir()
    table = pa.table({"id": ["validation_Math_1", "validation_Math_2"],
                      "question": ["<image 1> How many shapes?", "Compare <image 2> and <image 1>: which is red?"],
                      "options": ["['1', '2', '3']", "[]"],
                      "image_1": [png((200, 0, 0))] * 2, "image_2": [None, png((0, 0, 200))],
                      "answer": ["A", "left"], "question_type": ["multiple-choice", "open"]})
    pq.write_table(table, folder / "Math" / "validation-00000-of-00001.parquet")
    return folder


def answers(path):
    return {r["question_id"]: r["text"] for r in map(json.loads, path.read_text().splitlines()[1:])}


@pytest.mark.parametrize("benchmark, data", [("synthetic", "synthetic"), ("mmvp", "mmvp"), ("mmmu", "mmmu")])
def test_server_answers_as_the_engine_does(benchmark, data, request, served, tmp_path, capsys):
    engine_dir, server = served
    data = request.getfixturevalue(data)
    common = ["--benchmark", benchmark, "--data", str(data), "--max-new-tokens", "4", "--batch-size", "3", "--quiet"]
    assert eval_main([str(engine_dir), *common, "--out", str(tmp_path / "engine")]) == 0
    assert eval_main(["--server", server.url + "/v1", *common, "--out", str(tmp_path / "server")]) == 0
    assert "answers:" in capsys.readouterr().out
    from_server = answers(tmp_path / "server" / "answers.jsonl")
    assert from_server == answers(tmp_path / "engine" / "answers.jsonl")
    assert len(from_server) == {"synthetic": 6, "mmvp": 4, "mmmu": 2}[benchmark]  # MMMU: two images in one question
    result = json.loads((tmp_path / "server" / "results.json").read_text())
    assert result["backend"] == "tiny"  # named after the model the server serves


def test_engine_and_server_on_one_table(served, synthetic, tmp_path, capsys):
    engine_dir, server = served
    out = tmp_path / "report"
    code = evaluate.main(["--benchmark", "synthetic", "--data", str(synthetic), "--engine", f"ort={engine_dir}",
                          "--server", f"served={server.url}/v1#tiny", "--out", str(out), "--max-new-tokens", "4",
                          "--batch-size", "2", "--quiet"])
    assert code == 0
    assert "| category | ort | served |" in capsys.readouterr().out
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["same_answer_as_reference"] == {"ort": 1.0, "served": 1.0}


def test_server_trouble_is_one_line(served, synthetic, tmp_path, capsys):
    server = served[1]
    common = ["--benchmark", "synthetic", "--data", str(synthetic), "--out", str(tmp_path / "x"), "--quiet"]
    assert eval_main(["--server", server.url + "/v1", "--model", "other", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "the request failed" in err and "other" in err and "\n" not in err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(ServerError, match="could not list the served models"):
        ServerPredictor(f"http://127.0.0.1:{free}/v1")
    with pytest.raises(SystemExit):
        eval_main(common)  # neither an engine directory nor --server
    assert "give an engine directory or --server URL" in capsys.readouterr().err
