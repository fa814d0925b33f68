"""`python -m runtime.eval` on a real tiny ORT engine directory, and evaluate.py comparing it with the
PyTorch oracle: a float32 engine answers exactly as the oracle does."""

import json

import pytest

import evaluate
from runtime.eval.cli import main as eval_main
from test_eval_runner import write_synthetic_set
from tiny_engines import built_engine


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(checkpoint, engine directory): the session's tiny EVE engine, shared with the build tests."""
    checkpoint, engine, _ = built_engine("eve", tmp_path_factory)
    return checkpoint, engine


@pytest.fixture(scope="module")
def engine_dir(built):
    return built[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_set(tmp_path_factory.mktemp("synthetic"), n=6)


def answers(path):
    return {r["question_id"]: r["text"] for r in map(json.loads, path.read_text().splitlines()[1:])}


def test_single_engine_cli(engine_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    code = eval_main([str(engine_dir), "--benchmark", "synthetic", "--data", str(data), "--out", str(out),
                      "--batch-size", "3", "--max-new-tokens", "4", "--name", "ort-fp32", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "shapes/colour" in printed and "overall: exact_match" in printed
    result = json.loads((out / "results.json").read_text())
    assert result["backend"] == "ort-fp32" and result["overall"]["count"] == 6
    assert len(answers(out / "answers.jsonl")) == 6


def test_compare_engine_with_oracle(built, engine_dir, data, tmp_path, capsys):
    out = tmp_path / "report"
    code = evaluate.main(["--benchmark", "synthetic", "--data", str(data), "--torch", str(built[0]),
                          "--engine", f"ort-fp32={engine_dir}", "--out", str(out), "--max-new-tokens", "4",
                          "--batch-size", "3", "--quiet"])
    assert code == 0
    assert "| category | torch | ort-fp32 |" in capsys.readouterr().out
    # Same inputs, greedy: the float32 engine gives the oracle's answers, word for word.
    assert answers(out / "ort-fp32" / "answers.jsonl") == answers(out / "torch" / "answers.jsonl")
    assert (out / "comparison.png").stat().st_size > 0


def test_oracle_in_several_dtypes(built, data, tmp_path, capsys):
    out = tmp_path / "dtypes"
    code = evaluate.main(["--benchmark", "synthetic", "--data", str(data), "--torch", str(built[0]),
                          "--torch-dtype", "float32,bfloat16", "--out", str(out), "--max-new-tokens", "4", "--quiet"])
    assert code == 0
    assert "| category | torch-float32 | torch-bfloat16 |" in capsys.readouterr().out
    assert len(answers(out / "torch-bfloat16" / "answers.jsonl")) == 6
    with pytest.raises(SystemExit):
        evaluate.main(["--benchmark", "synthetic", "--data", str(data), "--torch", str(built[0]),
                       "--torch-dtype", "float64", "--out", str(out)])
    assert "--torch-dtype: float64; use float32, bfloat16, float16" in capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_code_2(engine_dir, tmp_path, capsys):
    code = eval_main([str(engine_dir), "--benchmark", "docvqa", "--data", str(tmp_path / "val_v1.0.json"),
                      "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no such file" in err and "\n" not in err
