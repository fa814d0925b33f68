"""Pipeline on built engines of every family: greedy answers equal the PyTorch oracle's token for token,
streaming equals non-streaming, a batch equals one by one, chat history and several images per prompt,
the image cache (identical rows, bounded, LRU), seeds, stop strings, context overflow and a lazy import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models.engines import torch_pipeline
from runtime.errors import AerieError, ContextOverflowError
from runtime.image_cache import ImageCache, image_key
from runtime.pipeline import Pipeline
from runtime.sampling import SamplingParams
from tiny_engines import FAMILIES, built_engine, synthetic_test_split

QUESTIONS = ("What colour is the shape?", "How many shapes are there?", "Which bar is the highest?",
             "What is the invoice number?")
GREEDY = SamplingParams(max_new_tokens=10)


def shapes_image(seed: int) -> Image.Image:
    """A small scene of coloured shapes, its size and layout drawn from `seed` (aspect ratios vary)."""
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(40, 260, 2))
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(5, 30))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


@pytest.fixture(scope="module", params=FAMILIES)
def built(request, tmp_path_factory):
    checkpoint, engine, _ = built_engine(request.param, tmp_path_factory)
    return request.param, torch_pipeline(checkpoint, tokenizer_dir=engine / "tokenizer"), Pipeline(engine)


def test_greedy_equals_oracle(built):
    family, oracle, pipe = built
    cases = synthetic_test_split(9)
    cases += [("Describe the two pictures.", [shapes_image(20), shapes_image(21)]), ("What is two plus two?", [])]
    answers = pipe.run_batch([q for q, _ in cases], [i for _, i in cases], GREEDY)
    for (question, images), answer in zip(cases, answers):
        expected = oracle.run(question, images, GREEDY)
        assert answer.token_ids == expected.token_ids, (question, len(images))
        assert answer.text == expected.text
        assert answer.prompt_tokens == len(expected.prompt_ids)
    print(f"\n{family}: {len(cases)} prompts (9 from the synthetic test split), greedy tokens identical to PyTorch")


def test_stream_equals_generate(built):
    _, _, pipe = built
    image = shapes_image(3)
    text = pipe.generate("What colour is the shape?", images=[image], max_new_tokens=12)
    stream = pipe.generate("What colour is the shape?", images=[image], max_new_tokens=12, stream=True)
    pieces = list(stream)
    assert "".join(pieces) == text and len(pieces) > 1
    assert stream.answer is not None and stream.answer.text == text


def test_stream_stopped_early_frees_its_slot(built):
    _, _, pipe = built
    stream = pipe.stream("Describe the image.", [shapes_image(4)], SamplingParams(max_new_tokens=30))
    for _ in zip(range(2), stream):
        pass
    assert not pipe.generator.busy, "an abandoned stream must not keep running"
    assert pipe.generate("Describe the image.", [shapes_image(4)], max_new_tokens=5)


def test_batch_equals_one_by_one(built):
    _, _, pipe = built
    prompts = list(QUESTIONS)
    images = [[shapes_image(10 + i)] for i in range(len(prompts))]
    params = SamplingParams(max_new_tokens=8, temperature=0.9, top_k=50, seed=7)
    batched = pipe.generate_batch(prompts, images, params)
    alone = [pipe.generate(p, i, params) for p, i in zip(prompts, images)]
    assert batched == alone


def test_chat_history_equals_oracle(built):
    family, oracle, pipe = built
    chat = pipe.chat(GREEDY)
    first_image, second_image = shapes_image(30), shapes_image(31)
    first = chat.ask("What colour is the shape?", images=[first_image])
    second_stream = chat.ask_stream("And how many shapes are there?")
    second_text = "".join(second_stream)
    third = chat.ask("Compare it with this one.", images=[second_image])
    turns = [("user", "<image>\nWhat colour is the shape?"), ("assistant", first.text),
             ("user", "And how many shapes are there?"), ("assistant", second_text),
             ("user", "<image>\nCompare it with this one.")]
    expected = oracle.run(turns, [first_image, second_image], GREEDY)
    assert third.token_ids == expected.token_ids
    assert third.cached_images == 1, "the first image's rows come from the cache"
    assert len(chat.turns) == 6 and len(chat.images) == 2
    chat.reset()
    assert chat.turns == [] and chat.images == []


def test_cache_gives_identical_rows_and_skips_vision(built):
    _, _, pipe = built
    image = shapes_image(40)
    rows, hit, _, vision_s = pipe.encode_image(image)
    assert not hit and vision_s > 0
    again, hit, _, vision_s = pipe.encode_image(image.copy())
    assert hit and vision_s == 0.0
    assert np.array_equal(rows, again)
    assert not again.flags.writeable, "a cached table can't be changed by a caller"
    fresh = Pipeline(pipe.engine_dir, cache_bytes=0)
    uncached, hit, _, _ = fresh.encode_image(image)
    assert not hit and len(fresh.cache) == 0
    np.testing.assert_array_equal(uncached, rows)


def test_seed_gives_the_same_sample(built):
    _, _, pipe = built
    image = shapes_image(50)
    params = dict(max_new_tokens=10, temperature=1.5, seed=123)
    first = pipe.run("Describe the image.", [image], SamplingParams(**params))
    second = pipe.run("Describe the image.", [image], SamplingParams(**params))
    assert first.token_ids == second.token_ids
    others = {tuple(pipe.run("Describe the image.", [image], SamplingParams(**{**params, "seed": s})).token_ids)
              for s in range(4)}
    assert len(others) > 1, "different seeds should give different samples"


def test_stop_string_cuts_the_answer(built):
    _, _, pipe = built
    image = shapes_image(60)
    full = pipe.generate("Describe the image.", [image], max_new_tokens=16)
    assert len(full) > 4
    stop = full[2:4]
    cut = pipe.generate("Describe the image.", [image], max_new_tokens=16, stop=(stop,))
    assert cut == full[: full.index(stop)]


def test_context_overflow_before_any_work(built):
    _, _, pipe = built
    small = Pipeline(pipe.engine_dir, max_length=32)
    with pytest.raises(ContextOverflowError, match="context is 32"):
        small.generate("What colour is the shape? " * 20)
    assert not small.generator.busy, "nothing was queued"


def test_bad_requests_are_aerie_errors(built):
    _, _, pipe = built
    with pytest.raises(AerieError, match="2 <image> placeholders for 1 images"):
        pipe.generate("<image> and <image>?", images=[shapes_image(1)])
    with pytest.raises(AerieError, match="temperature"):
        pipe.generate("Hi", temperature=-1)
    with pytest.raises(AerieError, match="unknown sampling option"):
        pipe.generate("Hi", temprature=1)
    with pytest.raises(AerieError, match="no such image file"):
        pipe.generate("Hi", images=["/nonexistent.png"])


def test_image_cache_is_bounded_lru():
    row = np.ones((4, 8), np.float32)  # 128 bytes
    cache = ImageCache(max_bytes=3 * row.nbytes)
    for key in "abc":
        cache.put(key, row)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", row)
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 3
    assert cache.bytes == 3 * row.nbytes
    cache.put("huge", np.ones((100, 8), np.float32))
    assert cache.get("huge") is None and cache.bytes <= cache.max_bytes
    assert (cache.hits, cache.misses) == (2, 2)


def test_image_key_is_about_pixels():
    image = shapes_image(70)
    assert image_key(image) == image_key(image.copy())
    assert image_key(image) != image_key(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def test_import_runtime_is_lazy():
    code = ("import sys, runtime; loaded = [m for m in ('torch', 'onnxruntime', 'runtime.pipeline') if m in sys.modules]; "
            "from runtime import Pipeline, SamplingParams; print(loaded, Pipeline.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] runtime.pipeline"
