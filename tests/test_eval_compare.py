"""Comparison mode: two real backends (the oracle in float32 and bfloat16) on the same questions give
one table, one plot and one JSON; the tables are checked on hand-made scores."""

import json

import pytest
import torch
from PIL import Image

from models.engines import torch_pipeline
from runtime.eval.benchmarks import Score
from runtime.eval.compare import compare_backends
from runtime.eval.predictors import GeneratePredictor
from runtime.eval.report import comparison_markdown, score_table
from runtime.eval.runner import greedy
from test_eval_runner import write_synthetic_set


def test_comparison_markdown_shows_differences_from_the_reference():
    a = Score("synthetic", "exact_match", {"exact_match": 0.75, "count": 8},
              {"shapes": {"exact_match": 1.0, "count": 4}, "text": {"exact_match": 0.5, "count": 4}})
    b = Score("synthetic", "exact_match", {"exact_match": 0.625, "count": 8},
              {"shapes": {"exact_match": 1.0, "count": 4}, "text": {"exact_match": 0.25, "count": 4}})
    table = comparison_markdown({"torch": a, "int4": b}, agreement={"torch": 1.0, "int4": 0.75})
    assert "| category | torch | int4 |" in table
    assert "| same answer as torch | 100.0 | 75.0 |" in table
    assert "| shapes | 100.0 | 100.0 (+0.0) |" in table
    assert "| text | 50.0 | 25.0 (-25.0) |" in table
    assert "| overall | 75.0 | 62.5 (-12.5) |" in table
    assert "8 questions" in table
    # Differences come from the unrounded values: 31/90 vs 32/90 is -1.1 points, not 34.4 - 35.6.
    c = Score("synthetic", "exact_match", {"exact_match": 32 / 90, "count": 90}, {"all": {"exact_match": 32 / 90, "count": 90}})
    d = Score("synthetic", "exact_match", {"exact_match": 31 / 90, "count": 90}, {"all": {"exact_match": 31 / 90, "count": 90}})
    assert "| overall | 35.6 | 34.4 (-1.1) |" in comparison_markdown({"torch": c, "int4": d})


def test_mme_tables_keep_points():
    s = Score("mme", "score", {"perception": 150.0, "cognition": 0.0, "total": 150.0, "count": 2},
              {"existence": {"accuracy": 0.5, "accuracy_plus": 0.0, "score": 50.0, "count": 2}}, headline="total")
    assert "| existence | 50.0 |" in comparison_markdown({"torch": s})
    assert "| overall | 150.0 |" in comparison_markdown({"torch": s})
    text = score_table(s)
    assert "existence  50.0      0.0            50.0   2" in text
    assert "total 150.0" in text


def test_compare_backends_writes_table_plot_and_json(tiny_eve_dir, tmp_path):
    data = write_synthetic_set(tmp_path / "synthetic", n=4)
    fp32 = GeneratePredictor("torch-fp32", torch_pipeline(tiny_eve_dir).generate)
    bf16 = GeneratePredictor("torch-bf16", torch_pipeline(tiny_eve_dir, dtype=torch.bfloat16).generate)
    out = tmp_path / "report"
    scores = compare_backends([fp32, bf16], "synthetic", data, out, params=greedy(3), progress=False)
    assert list(scores) == ["torch-fp32", "torch-bf16"]
    table = (out / "comparison.md").read_text()
    assert "| category | torch-fp32 | torch-bf16 |" in table
    assert "| shapes/colour |" in table and "| overall |" in table
    with Image.open(out / "comparison.png") as png:
        assert png.format == "PNG" and png.width > 300
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["backends"]["torch-fp32"] == scores["torch-fp32"].by_category()
    fp32, bf16 = ([json.loads(line)["text"] for line in (out / name / "answers.jsonl").read_text().splitlines()[1:]]
                  for name in scores)
    same = sum(a == b for a, b in zip(fp32, bf16)) / 4
    assert summary["same_answer_as_reference"] == {"torch-fp32": 1.0, "torch-bf16": same}
    assert f"| same answer as torch-fp32 | 100.0 | {100 * same:.1f} |" in table
    for name in scores:
        record = json.loads((out / name / "results.json").read_text())
        assert record["backend"] == name and record["sampling"]["temperature"] == 0.0
        assert len((out / name / "answers.jsonl").read_text().splitlines()) == 1 + 4


def test_backend_names_must_differ(tiny_eve_dir, tmp_path):
    p = GeneratePredictor("torch", torch_pipeline(tiny_eve_dir).generate)
    with pytest.raises(ValueError, match="must differ"):
        compare_backends([p, p], "synthetic", tmp_path / "x.json", tmp_path / "out")
