"""The benchmarks Aerie scores: how each reads its files, which metric it reports, how it aggregates.

Every benchmark's score has a headline (`overall`) and per-category metrics; `metric` names the one
metric that compares backends category by category (what the papers report for that benchmark).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .ai2d import ai2d_match, read_ai2d
from .anls import anls
from .exact_match import exact_match
from .gqa import gqa_match, read_gqa
from .mathvista import mathvista_match, read_mathvista
from .mmbench import mmbench_match, read_mmbench
from .mme import mme_subtask_metrics, mme_totals
from .mmmu import mmmu_match, read_mmmu
from .mmvp import mmvp_match, read_mmvp
from .ocrbench import ocrbench_hit, ocrbench_totals, read_ocrbench
from .pope import pope_metrics
from .questions import BenchmarkDataError, Question, read_llava_jsonl
from .readers import (
    read_chartqa,
    read_docvqa,
    read_infovqa,
    read_llava_conversations,
    read_mme,
    read_pope,
    read_textvqa,
)
from .realworldqa import read_realworldqa, realworldqa_match
from .relaxed_accuracy import relaxed_accuracy
from .scienceqa import read_scienceqa, scienceqa_match
from .seed import read_seed, seed_match
from .vizwiz import predicts_unanswerable, read_vizwiz, unanswerable_metrics, vizwiz_accuracy
from .vqa_accuracy import vqa_accuracy

Predictions = Mapping[str, str]  # question_id -> answer text
Reader = Callable[[Path, "Path | None"], list[Question]]
QuestionMetric = Callable[[Question, str], float]  # one question's score for one answer


@dataclass
class Score:
    benchmark: str
    metric: str  # the per-category metric backends are compared on
    overall: dict[str, float]
    categories: dict[str, dict[str, float]]  # category -> metric -> value (plus "count")
    headline: str = ""  # the key of `overall` the papers quote; the comparison metric unless set

    def __post_init__(self) -> None:
        self.headline = self.headline or self.metric

    def by_category(self) -> dict[str, float]:
        """The comparison metric per category, and the headline number as "overall"."""
        return {**{name: values[self.metric] for name, values in self.categories.items()},
                "overall": self.overall[self.headline]}

    def to_dict(self) -> dict:
        return {"benchmark": self.benchmark, "metric": self.metric, "headline": self.headline,
                "overall": self.overall, "categories": self.categories}


def group_by_category(questions: Sequence[Question]) -> dict[str, list[Question]]:
    groups: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        for category in q.categories:
            groups[category].append(q)
    return dict(sorted(groups.items()))


def on_answers(metric: Callable[[str, Sequence[str]], float]) -> QuestionMetric:
    """A metric of (prediction, reference answers) as a metric of (question, prediction)."""
    return lambda question, prediction: metric(prediction, question.answers)


def category_means(questions: Sequence[Question], values: Mapping[str, float], metric: str) -> dict[str, dict[str, float]]:
    return {category: {metric: sum(values[q.question_id] for q in group) / len(group), "count": len(group)}
            for category, group in group_by_category(questions).items()}


def mean_per_question(name: str, metric: str, per_question: QuestionMetric):
    """A scorer for metrics defined per question and averaged: over all questions and per category."""
    def score(questions: Sequence[Question], predictions: Predictions) -> Score:
        values = {q.question_id: per_question(q, predictions[q.question_id]) for q in questions}
        overall = {metric: sum(values.values()) / len(values), "count": len(values)}
        return Score(name, metric, overall, category_means(questions, values, metric))
    return score


def all_right_per_group(name: str, metric: str, per_question: QuestionMetric):
    """A scorer for benchmarks that count a group of questions (MMBench's rotations of one question,
    MMVP's pair) as right only when every question in it is; the per-question accuracy rides along."""
    def score(questions: Sequence[Question], predictions: Predictions) -> Score:
        right = {q.question_id: per_question(q, predictions[q.question_id]) for q in questions}
        groups: dict[str, list[Question]] = defaultdict(list)
        for q in questions:
            groups[q.group or q.question_id].append(q)
        leaders = [group[0] for group in groups.values()]  # a group is scored under its first question's categories
        values = {group[0].question_id: float(all(right[q.question_id] for q in group)) for group in groups.values()}
        overall = {metric: sum(values.values()) / len(values), "question_accuracy": sum(right.values()) / len(right),
                   "count": len(questions)}
        return Score(name, metric, overall, category_means(leaders, values, metric))
    return score


def score_vizwiz(questions: Sequence[Question], predictions: Predictions) -> Score:
    """VQA accuracy per answer type, and how well "unanswerable" is predicted."""
    score = mean_per_question("vizwiz", "vqa_accuracy", vizwiz_accuracy)(questions, predictions)
    score.overall.update(unanswerable_metrics([predicts_unanswerable(predictions[q.question_id]) for q in questions],
                                              [not q.details.get("answerable", 1) for q in questions]))
    return score


def score_ocrbench(questions: Sequence[Question], predictions: Predictions) -> Score:
    """Points (questions right) per type, summed into Text Recognition and the final score."""
    categories = {category: {"score": sum(ocrbench_hit(q, predictions[q.question_id]) for q in group),
                             "count": len(group)}
                  for category, group in group_by_category(questions).items()}
    overall = ocrbench_totals({name: c["score"] for name, c in categories.items()})
    return Score("ocrbench", "score", {**overall, "count": len(questions)}, categories, headline="final_score")


def score_pope(questions: Sequence[Question], predictions: Predictions) -> Score:
    """Metrics per split; the headline is their mean over splits, as the papers report POPE."""
    categories: dict[str, dict[str, float]] = {}
    for category, group in group_by_category(questions).items():
        metrics = pope_metrics([predictions[q.question_id] for q in group], [q.answers[0] for q in group])
        categories[category] = {**metrics, "count": len(group)}
    names = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    overall = {m: sum(c[m] for c in categories.values()) / len(categories) for m in names}
    return Score("pope", "f1", {**overall, "count": len(questions)}, categories)


def score_mme(questions: Sequence[Question], predictions: Predictions) -> Score:
    categories: dict[str, dict[str, float]] = {}
    for subtask, group in group_by_category(questions).items():
        metrics = mme_subtask_metrics(
            [q.image or q.question_id for q in group],
            [predictions[q.question_id] for q in group],
            [q.answers[0] for q in group],
        )
        categories[subtask] = {**metrics, "count": len(group)}
    overall = mme_totals({name: c["score"] for name, c in categories.items()})
    return Score("mme", "score", {**overall, "count": len(questions)}, categories, headline="total")


@dataclass(frozen=True)
class Benchmark:
    name: str
    read_annotations: Reader  # the benchmark's own files
    score_answers: Callable[[Sequence[Question], Predictions], Score]
    max_new_tokens: int  # LLaVA's evaluation default is 128; the synthetic answers are a few tokens
    reads_llava_jsonl: bool = True  # False where scoring needs what a LLaVA question file lacks (options, groups)

    def read(self, data: str | Path, images: str | Path | None = None) -> list[Question]:
        data, images = Path(data), Path(images) if images is not None else None
        if data.suffix == ".jsonl":
            if not self.reads_llava_jsonl:
                raise BenchmarkDataError(f"{data}: {self.name} is scored from its own files (a LLaVA question file "
                                         "has no options, rotations or answer types); see docs/accuracy.md")
            return read_llava_jsonl(data, images)
        return self.read_annotations(data, images)

    def score(self, questions: Sequence[Question], predictions: Predictions) -> Score:
        missing = [q.question_id for q in questions if q.question_id not in predictions]
        if missing:
            raise BenchmarkDataError(
                f"{self.name}: {len(missing)} of {len(questions)} questions have no answer (first: {missing[0]!r}); "
                "run the benchmark to the end before scoring"
            )
        return self.score_answers(questions, predictions)


def choice_accuracy(name: str, reader: Reader, match: QuestionMetric) -> Benchmark:
    """A benchmark of (mostly) multiple-choice questions read from its own files, scored by the share
    of questions `match` calls right."""
    return Benchmark(name, reader, mean_per_question(name, "accuracy", match), 128, reads_llava_jsonl=False)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("textvqa", read_textvqa, mean_per_question("textvqa", "vqa_accuracy", on_answers(vqa_accuracy)), 128),
        Benchmark("vqav2", read_llava_jsonl, mean_per_question("vqav2", "vqa_accuracy", on_answers(vqa_accuracy)), 128),
        Benchmark("gqa", read_gqa, mean_per_question("gqa", "accuracy", gqa_match), 128),
        Benchmark("vizwiz", read_vizwiz, score_vizwiz, 128),
        Benchmark("docvqa", read_docvqa, mean_per_question("docvqa", "anls", on_answers(anls)), 128),
        Benchmark("infovqa", read_infovqa, mean_per_question("infovqa", "anls", on_answers(anls)), 128),
        Benchmark("chartqa", read_chartqa, mean_per_question("chartqa", "relaxed_accuracy", on_answers(relaxed_accuracy)), 128),
        Benchmark("ocrbench", read_ocrbench, score_ocrbench, 128, reads_llava_jsonl=False),
        choice_accuracy("scienceqa_img", read_scienceqa, scienceqa_match),
        choice_accuracy("seed_image", read_seed, seed_match),
        Benchmark("mmbench", read_mmbench, all_right_per_group("mmbench", "circular_accuracy", mmbench_match), 128,
                  reads_llava_jsonl=False),
        choice_accuracy("ai2d", read_ai2d, ai2d_match),
        choice_accuracy("mmmu", read_mmmu, mmmu_match),
        choice_accuracy("mathvista", read_mathvista, mathvista_match),
        choice_accuracy("realworldqa", read_realworldqa, realworldqa_match),
        Benchmark("mmvp", read_mmvp, all_right_per_group("mmvp", "pair_accuracy", mmvp_match), 128,
                  reads_llava_jsonl=False),
        Benchmark("pope", read_pope, score_pope, 128),
        Benchmark("mme", read_mme, score_mme, 128),
        Benchmark("synthetic", read_llava_conversations, mean_per_question("synthetic", "exact_match", on_answers(exact_match)), 32),
    )
}


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise BenchmarkDataError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}") from None
