"""A deterministic synthetic vision-language benchmark: images with questions and one-word answers.

Each sample is drawn from its own `random.Random((seed, split, index))`, so a split is the same on every
machine (Pillow's bundled FreeType font, `ImageFont.load_default(size)`, is the only font used) and
any sample can be regenerated alone. Categories, each a skill the real benchmarks measure:

- shapes/colour, shapes/kind, shapes/count, shapes/position: large flat shapes on a light background;
- text/word (a word filling much of the image) and text/small (small text on a large canvas);
- chart/highest and chart/value: bar charts with bars labelled A, B, C, D and a value grid;
- document/field: "key: value" lines, "What is the invoice number?".

Answers are single words or numbers from a small vocabulary, so a tiny word-level-friendly tokenizer
covers them. Output: LLaVA JSON (`train.json`, `val.json`, `test.json`: one record per line inside the
array, each with an extra `category`), `pretrain.json` (image + caption, for the `plain` stages) and PNGs.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from PIL import Image, ImageDraw, ImageFont

from .progress import Progress

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "orange": (245, 130, 10),
    "purple": (140, 40, 180),
    "black": (20, 20, 20),
}
KINDS = ("circle", "square", "triangle", "star")
WORDS = (
    "cat", "dog", "sun", "tree", "book", "fish", "bird", "moon", "car", "house",
    "apple", "water", "green", "light", "paper", "river", "cloud", "train", "stone", "music",
)
NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo")
BAR_LABELS = ("A", "B", "C", "D")
ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (2, 1), (1, 2))

# Share of each category in the training split: the demo targets (colour, count) and the shape skills
# get most of it; OCR-like categories stay present so their accuracy is measured.
TRAIN_MIX: dict[str, float] = {
    "shapes/colour": 0.10,
    "shapes/kind": 0.12,
    "shapes/count": 0.30,
    "shapes/position": 0.10,
    "text/word": 0.08,
    "text/small": 0.03,
    "chart/highest": 0.10,
    "chart/value": 0.07,
    "document/field": 0.10,
}
CATEGORIES = tuple(TRAIN_MIX)


@dataclass
class Sample:
    image: Image.Image
    question: str
    answer: str
    caption: str
    category: str


# ---------------------------------------------------------------------------------------------- drawing


def canvas_size(rng: random.Random, long_min: int, long_max: int, aspects=ASPECTS) -> tuple[int, int]:
    """A (width, height) with one of the aspect ratios and a long side in [long_min, long_max]."""
    aw, ah = rng.choice(aspects)
    long_side = rng.randint(long_min, long_max)
    if aw >= ah:
        return long_side, max(16, round(long_side * ah / aw))
    return max(16, round(long_side * aw / ah)), long_side


def background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    grey = rng.randint(235, 255)
    return Image.new("RGB", size, (grey, grey, rng.randint(max(225, grey - 15), grey)))


def jitter(rng: random.Random, colour: tuple[int, int, int], amount: int = 15) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, size: float, fill) -> None:
    """A shape of `kind` with its bounding box of side `size` centred on (cx, cy)."""
    r = size / 2
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "square":
        draw.rectangle((cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9), fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    else:  # star: five points, inner radius 0.45
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)


def place_apart(rng: random.Random, n: int, size: float, width: int, height: int, gap: float) -> list[tuple[float, float]] | None:
    """n centres for shapes of side `size` inside the image, at least size + gap apart (None if no room)."""
    centres: list[tuple[float, float]] = []
    for _ in range(400):
        x = rng.uniform(size / 2 + 2, width - size / 2 - 2)
        y = rng.uniform(size / 2 + 2, height - size / 2 - 2)
        if all(max(abs(x - cx), abs(y - cy)) >= size + gap for cx, cy in centres):
            centres.append((x, y))
            if len(centres) == n:
                return centres
    return None


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, size))


def text_box(text: str, size: int) -> tuple[int, int, int, int]:
    return font(size).getbbox(text)


# ---------------------------------------------------------------------------------------------- categories


def shapes_colour(rng: random.Random) -> Sample:
    w, h = canvas_size(rng, 80, 360)
    image = background(rng, (w, h))
    colour, kind = rng.choice(list(COLOURS)), rng.choice(KINDS)
    size = min(w, h) * rng.uniform(0.45, 0.85)
    cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
    draw_shape(ImageDraw.Draw(image), kind, cx, cy, size, jitter(rng, COLOURS[colour]))
    return Sample(image, "What colour is the shape?", colour, f"1 {colour} {kind}", "shapes/colour")


def shapes_kind(rng: random.Random) -> Sample:
    sample = shapes_colour(rng)
    kind = sample.caption.split()[-1]
    return Sample(sample.image, "What shape is this?", kind, sample.caption, "shapes/kind")


def shapes_count(rng: random.Random) -> Sample:
    """1-4 identical shapes, well apart: one colour, circles or squares (whose areas match), one size relative
    to the long side (the side preprocessing scales). A group of like objects to count, as in the counting
    questions of the real benchmarks; equal areas let a tiny model count by the amount of ink."""
    while True:
        w, h = canvas_size(rng, 96, 400, aspects=((1, 1), (4, 3), (3, 4), (3, 2), (2, 3)))
        n = rng.randint(1, 4)
        size = max(w, h) * rng.uniform(0.19, 0.2)
        centres = place_apart(rng, n, size, w, h, gap=size * 0.3)
        if centres:
            break
    image = background(rng, (w, h))
    draw = ImageDraw.Draw(image)
    colour, kind = rng.choice(list(COLOURS)), rng.choice(("circle", "square"))
    for cx, cy in centres:
        draw_shape(draw, kind, cx, cy, size, jitter(rng, COLOURS[colour], 8))
    caption = f"{n} {colour} {kind}" + ("s" if n > 1 else "")
    return Sample(image, "How many shapes are there?", str(n), caption, "shapes/count")


def shapes_position(rng: random.Random) -> Sample:
    w, h = canvas_size(rng, 96, 400, aspects=((1, 1), (4, 3), (3, 4), (3, 2), (2, 3)))
    image = background(rng, (w, h))
    first, second = rng.sample(list(COLOURS), 2)
    kinds = rng.choice(KINDS), rng.choice(KINDS)
    relation = rng.choice(("left", "right", "above", "below"))
    horizontal = relation in ("left", "right")
    span = w if horizontal else h
    size = min(min(w, h) * 0.4, span * 0.3) * rng.uniform(0.7, 1.0)
    a = rng.uniform(size / 2 + 2, span / 2 - size * 0.6)  # the earlier one (left / top)
    b = rng.uniform(span / 2 + size * 0.6, span - size / 2 - 2)
    cross_span = h if horizontal else w
    cross = [rng.uniform(size / 2 + 2, cross_span - size / 2 - 2) for _ in range(2)]
    earlier_is_first = relation in ("left", "above")
    pos_first = a if earlier_is_first else b
    pos_second = b if earlier_is_first else a
    draw = ImageDraw.Draw(image)
    for colour, kind, pos, c in ((first, kinds[0], pos_first, cross[0]), (second, kinds[1], pos_second, cross[1])):
        cx, cy = (pos, c) if horizontal else (c, pos)
        draw_shape(draw, kind, cx, cy, size, jitter(rng, COLOURS[colour]))
    question = f"Where is the {first} shape relative to the {second} shape?"
    caption = f"{first} {kinds[0]} {relation} {'of ' if horizontal else ''}{second} {kinds[1]}"
    return Sample(image, question, relation, caption, "shapes/position")


def draw_word(rng: random.Random, image: Image.Image, word: str, size: int) -> None:
    left, top, right, bottom = text_box(word, size)
    tw, th = right - left, bottom - top
    x = rng.uniform(0, max(0, image.width - tw)) - left
    y = rng.uniform(0, max(0, image.height - th)) - top
    ink = rng.choice(((10, 10, 10), (20, 30, 120), (120, 20, 20), (20, 90, 30)))
    ImageDraw.Draw(image).text((x, y), word, fill=ink, font=font(size))


def text_word(rng: random.Random) -> Sample:
    word = rng.choice(WORDS)
    w, h = canvas_size(rng, 96, 320, aspects=((1, 1), (4, 3), (3, 2), (2, 1)))
    # A font size that makes the word 55-90% of the width (and fit the height).
    ref_left, ref_top, ref_right, ref_bottom = text_box(word, 100)
    scale = min(w * rng.uniform(0.55, 0.9) / (ref_right - ref_left), h * 0.8 / (ref_bottom - ref_top))
    image = background(rng, (w, h))
    draw_word(rng, image, word, int(100 * scale))
    return Sample(image, "What word is written in the image?", word, f"the word {word}", "text/word")


def text_small(rng: random.Random) -> Sample:
    word = rng.choice(WORDS)
    w, h = canvas_size(rng, 448, 640, aspects=((1, 1), (4, 3), (3, 4), (2, 1)))
    image = background(rng, (w, h))
    draw_word(rng, image, word, rng.randint(11, 16))
    return Sample(image, "What word is written in the image?", word, f"the word {word}", "text/small")


def bar_chart(rng: random.Random) -> tuple[Image.Image, list[int]]:
    """3-4 bars with values 1-9 (a unique maximum) on a 0-10 grid, labelled A, B, C, D below."""
    w, h = canvas_size(rng, 128, 360, aspects=((1, 1), (4, 3), (3, 2), (2, 1)))
    n = rng.randint(3, 4)
    while True:
        values = [rng.randint(1, 9) for _ in range(n)]
        if values.count(max(values)) == 1:
            break
    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    label_size = max(8, int(h * 0.1))
    left, right, top, bottom = w * 0.08, w * 0.97, h * 0.05, h - label_size * 1.6
    for tick in range(11):
        y = bottom - (bottom - top) * tick / 10
        draw.line((left, y, right, y), fill=(225, 225, 225) if tick % 5 else (160, 160, 160), width=1)
    slot = (right - left) / n
    for i, value in enumerate(values):
        x0 = left + slot * (i + 0.2)
        x1 = left + slot * (i + 0.8)
        y = bottom - (bottom - top) * value / 10
        draw.rectangle((x0, y, x1, bottom), fill=jitter(rng, COLOURS[rng.choice(list(COLOURS))]))
        lb = text_box(BAR_LABELS[i], label_size)
        draw.text(((x0 + x1) / 2 - (lb[2] + lb[0]) / 2, bottom + label_size * 0.2), BAR_LABELS[i], fill=(0, 0, 0), font=font(label_size))
    draw.line((left, top, left, bottom), fill=(0, 0, 0), width=1)
    return image, values


def chart_highest(rng: random.Random) -> Sample:
    image, values = bar_chart(rng)
    best = BAR_LABELS[values.index(max(values))]
    return Sample(image, "Which bar is the highest?", best, f"a bar chart, bar {best} is the highest", "chart/highest")


def chart_value(rng: random.Random) -> Sample:
    image, values = bar_chart(rng)
    i = rng.randrange(len(values))
    return Sample(image, f"What is the value of bar {BAR_LABELS[i]}?", str(values[i]),
                  "a bar chart, " + ", ".join(f"{BAR_LABELS[j]} {v}" for j, v in enumerate(values)), "chart/value")


DOC_FIELDS: dict[str, tuple[str, Callable[[random.Random], str]]] = {
    "Invoice": ("What is the invoice number?", lambda r: str(r.randint(1000, 9999))),
    "Order": ("What is the order number?", lambda r: str(r.randint(100, 999))),
    "Total": ("What is the total?", lambda r: str(r.randint(10, 99))),
    "Name": ("What is the name?", lambda r: r.choice(NAMES)),
}


def document_field(rng: random.Random) -> Sample:
    w, h = canvas_size(rng, 160, 420, aspects=((3, 4), (2, 3), (1, 1), (4, 3)))
    keys = rng.sample(list(DOC_FIELDS), rng.randint(2, 4))
    lines = [(k, DOC_FIELDS[k][1](rng)) for k in keys]
    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    widest = max(text_box(f"{k}: {v}", 100)[2] for k, v in lines)
    size = int(min(100 * w * 0.85 / widest, h * 0.8 / len(lines) / 1.5))
    y = rng.uniform(h * 0.05, max(h * 0.05, h - len(lines) * size * 1.5))
    for k, v in lines:
        draw.text((w * 0.06, y), f"{k}: {v}", fill=(10, 10, 10), font=font(size))
        y += size * 1.5
    key, value = rng.choice(lines)
    caption = "a document, " + ", ".join(f"{k} {v}" for k, v in lines)
    return Sample(image, DOC_FIELDS[key][0], value, caption, "document/field")


GENERATORS: dict[str, Callable[[random.Random], Sample]] = {
    "shapes/colour": shapes_colour,
    "shapes/kind": shapes_kind,
    "shapes/count": shapes_count,
    "shapes/position": shapes_position,
    "text/word": text_word,
    "text/small": text_small,
    "chart/highest": chart_highest,
    "chart/value": chart_value,
    "document/field": document_field,
}


# ---------------------------------------------------------------------------------------------- splits


def sample_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"{seed}/{split}/{index}")


def split_categories(split: str, n: int, seed: int, mix: dict[str, float]) -> list[str]:
    """The category of each sample: drawn from `mix` for train, balanced round-robin for val/test."""
    if split == "train":
        rng = random.Random(f"{seed}/{split}/categories")
        return rng.choices(list(mix), weights=list(mix.values()), k=n)
    names = list(mix)
    return [names[i % len(names)] for i in range(n)]


def make_sample(seed: int, split: str, index: int, category: str) -> Sample:
    return GENERATORS[category](sample_rng(seed, split, index))


def corpus() -> list[str]:
    """Every question and answer string the generator can produce (for training a tokenizer)."""
    texts = [
        "What colour is the shape?", "What shape is this?", "How many shapes are there?",
        "What word is written in the image?", "Which bar is the highest?", "shape shapes a the of bar chart document word",
        *COLOURS, *KINDS, *WORDS, *NAMES, *BAR_LABELS, "left right above below is",
        *(q for q, _ in DOC_FIELDS.values()), *(f"{k}:" for k in DOC_FIELDS), *map(str, range(10)),
    ]
    texts += [f"Where is the {a} shape relative to the {b} shape?" for a in COLOURS for b in COLOURS if a != b]
    texts += [f"What is the value of bar {label}?" for label in BAR_LABELS]
    return texts


def write_json_lines(path: Path, records: list[dict]) -> None:
    """A JSON array with one record per line, so an error can be reported by line."""
    with path.open("w") as f:
        f.write("[\n")
        for i, record in enumerate(records):
            f.write(json.dumps(record) + ("," if i < len(records) - 1 else "") + "\n")
        f.write("]\n")


def generate_split(out: Path, split: str, n: int, seed: int, mix: dict[str, float],
                   progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Write the split's PNGs; return its question records and its caption records."""
    folder = out / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    qa, captions = [], []
    bar = Progress(n, label=f"{split} images", enabled=progress)
    for index, category in enumerate(split_categories(split, n, seed, mix)):
        sample = make_sample(seed, split, index, category)
        image_path = f"images/{split}/{index:06d}.png"
        sample.image.save(out / image_path, optimize=False)
        sample_id = f"{split}-{index:06d}"
        qa.append({
            "id": sample_id, "image": image_path, "category": category,
            "conversations": [{"from": "human", "value": "<image>\n" + sample.question}, {"from": "gpt", "value": sample.answer}],
        })
        captions.append({
            "id": sample_id, "image": image_path, "category": category,
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": sample.caption}],
        })
        bar.advance()
    bar.close()
    return qa, captions


def generate(out: str | Path, train: int, val: int, test: int, seed: int = 0, mix: dict[str, float] | None = None,
             progress: bool = True) -> Path:
    """Write the whole data set into `out`: {train,val,test,pretrain}.json, images/<split>/*.png, meta.json;
    `progress` draws a bar per split on stderr."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mix = mix or TRAIN_MIX
    for split, n in (("train", train), ("val", val), ("test", test)):
        qa, captions = generate_split(out, split, n, seed, mix, progress)
        write_json_lines(out / f"{split}.json", qa)
        if split == "train":
            write_json_lines(out / "pretrain.json", captions)
    meta = {"seed": seed, "splits": {"train": train, "val": val, "test": test}, "train_mix": mix}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.eval.synthetic",
                                     description="Generate the synthetic vision-language data set (LLaVA JSON + PNG).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=int, default=30000, help="training samples (default: %(default)s)")
    parser.add_argument("--val", type=int, default=450, help="validation samples (default: %(default)s)")
    parser.add_argument("--test", type=int, default=900, help="test samples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the data set's seed (default: %(default)s)")
    args = parser.parse_args(argv)
    out = generate(args.out, args.train, args.val, args.test, args.seed)
    print(f"wrote {out}/{{train,val,test,pretrain}}.json and images/", flush=True)


if __name__ == "__main__":
    main()
