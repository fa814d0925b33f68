"""Scores as text: a table per run, a markdown comparison of backends, a bar chart (PNG), JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from .benchmarks import Score

# Metrics that are already on their final scale (MME points, counts); the rest are fractions shown in percent.
RAW_METRICS = frozenset({"score", "perception", "cognition", "total", "final_score", "text_recognition", "count"})


def on_scale(value: float, metric: str) -> float:
    """A metric's value as tables show it: percent for fractions, points and counts as they are."""
    return value if metric in RAW_METRICS else 100 * value


def show(value: float, metric: str) -> str:
    return str(int(value)) if metric == "count" else f"{on_scale(value, metric):.1f}"


def score_table(score: Score) -> str:
    """Categories as rows, every metric as a column; then the headline numbers."""
    metrics = [m for m in next(iter(score.categories.values())) if m != "count"] + ["count"]
    rows = [["category", *metrics]]
    rows += [[name, *(show(values[m], m) for m in metrics)] for name, values in score.categories.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    overall = ", ".join(f"{m} {show(v, m)}" for m, v in score.overall.items())
    return "\n".join([f"{score.benchmark} ({score.metric} per category)", *lines, f"overall: {overall}"])


def comparison_markdown(scores: Mapping[str, Score], agreement: Mapping[str, float] | None = None) -> str:
    """One row per category (and overall), one column per backend; later backends show their
    difference from the first (the reference, usually the PyTorch oracle). `agreement` (backend ->
    fraction of answers identical to the reference's) adds a last row."""
    first = next(iter(scores.values()))
    reference = first.by_category()
    header = ["category", *scores]
    rows = []
    for category in reference:
        metric = first.headline if category == "overall" else first.metric
        cells = [category]
        for i, score in enumerate(scores.values()):
            value = score.by_category().get(category)
            if value is None:
                cells.append("–")
            elif i == 0:
                cells.append(show(value, metric))
            else:
                delta = on_scale(value, metric) - on_scale(reference[category], metric)
                cells.append(f"{show(value, metric)} ({delta:+.1f})")
        rows.append(cells)
    if agreement is not None:
        rows.append([f"same answer as {next(iter(scores))}", *(f"{100 * agreement[name]:.1f}" for name in scores)])
    unit = "" if first.metric in RAW_METRICS else " (%)"
    lines = [
        f"{first.benchmark}: {first.metric}{unit} per category, overall = {first.headline}; "
        f"{int(first.overall['count'])} questions",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    return "\n".join(lines) + "\n"


def plot_comparison(scores: Mapping[str, Score], path: str | Path) -> Path:
    """Grouped bars: the comparison metric per category (and overall), one colour per backend."""
    import matplotlib  # imported here: plotting is optional on an edge box

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(scores.values()))
    categories = [c for c in first.by_category() if c != "overall" or first.headline == first.metric]
    scale = 1.0 if first.metric in RAW_METRICS else 100.0
    width = 0.8 / len(scores)
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.4 * len(categories) * len(scores) + 2)), 4.5))
    for i, (backend, score) in enumerate(scores.items()):
        values = score.by_category()
        xs = [c + (i - (len(scores) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(xs, [scale * values.get(c, 0.0) for c in categories], width, label=backend)
    ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 6 else 0)
    ax.set_ylabel(f"{first.metric}{'' if scale == 1.0 else ' (%)'}")
    ax.set_title(f"{first.benchmark}: {first.metric} per category")
    if scale == 100.0:
        ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(path: str | Path, document: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
