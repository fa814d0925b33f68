"""The synthetic benchmark generator: deterministic, LLaVA-format, every category answerable from the pixels."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from runtime.eval import synthetic
from training.llava import SkipLog, read_records


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("synth"), train=40, val=18, test=18, seed=3, progress=False)


def test_same_seed_same_files(small_set, tmp_path):
    again = synthetic.generate(tmp_path, train=40, val=18, test=18, seed=3, progress=False)
    for name in ("train.json", "val.json", "test.json", "pretrain.json", "images/train/000007.png", "images/test/000017.png"):
        assert digest(small_set / name) == digest(again / name), name


def test_other_seed_other_images(small_set, tmp_path):
    other = synthetic.generate(tmp_path, train=4, val=0, test=0, seed=4, progress=False)
    assert digest(small_set / "images/train/000000.png") != digest(other / "images/train/000000.png")


def test_records_are_llava_format_with_categories(small_set):
    records = read_records(small_set / "test.json", skips=SkipLog(strict=True))
    assert len(records) == 18
    # val/test are balanced: every category twice in 18 records.
    assert sorted({r.category for r in records}) == sorted(synthetic.CATEGORIES)
    assert all(sum(r.category == c for r in records) == 2 for c in synthetic.CATEGORIES)
    raw = json.loads((small_set / "test.json").read_text())
    first = raw[0]
    assert set(first) == {"id", "image", "category", "conversations"}
    assert first["conversations"][0]["from"] == "human" and first["conversations"][0]["value"].startswith("<image>\n")
    assert first["conversations"][1]["from"] == "gpt"
    # Splits do not share images.
    assert {r.image for r in records}.isdisjoint(r.image for r in read_records(small_set / "train.json"))


def test_answers_come_from_a_small_vocabulary(small_set):
    vocabulary = {*synthetic.COLOURS, *synthetic.KINDS, *synthetic.WORDS, *synthetic.NAMES, *synthetic.BAR_LABELS,
                  "left", "right", "above", "below"}
    for record in read_records(small_set / "train.json"):
        answer = record.turns[1][1]
        assert answer in vocabulary or answer.isdigit(), answer


def test_sizes_and_aspect_ratios_vary(small_set):
    sizes = {Image.open(p).size for p in (small_set / "images" / "train").glob("*.png")}
    aspects = {round(w / h, 1) for w, h in sizes}
    assert len(sizes) > 20 and min(aspects) <= 0.6 and max(aspects) >= 1.9


def test_colour_answer_is_the_shape_colour():
    for index in range(30):
        sample = synthetic.make_sample(0, "test", index, "shapes/colour")
        pixels = np.asarray(sample.image).reshape(-1, 3).astype(int)
        # The shape's pixels are the ones far from the light background.
        ink = pixels[np.abs(pixels - pixels[0]).sum(axis=1) > 90]
        nearest = min(synthetic.COLOURS, key=lambda c: np.abs(np.median(ink, axis=0) - synthetic.COLOURS[c]).sum())
        assert nearest == sample.answer


def count_blobs(image: Image.Image) -> int:
    """Connected regions of non-background pixels (4-connectivity), by a flood fill in numpy."""
    pixels = np.asarray(image).astype(int)
    ink = np.abs(pixels - pixels[0, 0]).sum(axis=2) > 60
    seen = np.zeros_like(ink)
    blobs = 0
    for y, x in zip(*np.nonzero(ink)):
        if seen[y, x]:
            continue
        blobs += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < ink.shape[0] and 0 <= nx < ink.shape[1] and ink[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return blobs


def test_count_matches_the_drawn_shapes():
    for index in range(12):
        sample = synthetic.make_sample(0, "test", index, "shapes/count")
        assert count_blobs(sample.image) == int(sample.answer)


def test_position_answer_matches_the_centres():
    for index in range(20):
        sample = synthetic.make_sample(0, "test", index, "shapes/position")
        first, second = sample.question.split("the ")[1].split()[0], sample.question.split("the ")[2].split()[0]
        pixels = np.asarray(sample.image).astype(int)
        centres = {}
        for name in (first, second):
            close = np.abs(pixels - np.asarray(synthetic.COLOURS[name])).sum(axis=2) < 50
            ys, xs = np.nonzero(close)
            centres[name] = (xs.mean(), ys.mean())
        (x1, y1), (x2, y2) = centres[first], centres[second]
        expected = {"left": x1 < x2, "right": x1 > x2, "above": y1 < y2, "below": y1 > y2}
        assert expected[sample.answer], (index, sample.answer, centres)


def test_command_line_shows_progress_per_split(tmp_path, capsys):
    synthetic.main(["--out", str(tmp_path / "d"), "--train", "3", "--val", "2", "--test", "1"])
    err = capsys.readouterr().err
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        assert f"{split} images {n}/{n}" in err
    assert (tmp_path / "d" / "test.json").is_file()
