"""Pipeline on built engines of every family: greedy answers equal the PyTorch oracle's token for token,
streaming equals non-streaming, a batch equals one by one, chat history and several images per prompt,
the image cache (identical rows, bounded, LRU), seeds, stop strings, context overflow and a lazy import.
The habits of other tools' users: one image without a list in every form a caller may hold it, OpenAI and
Hugging Face chat messages, remote images only when allowed."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models.engines import torch_pipeline
from runtime.errors import AerieError, ContextOverflowError, ImageError
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
    chat = pipe.chat(params=GREEDY)
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


# --- the habits of other tools' users ----------------------------------------------------------------

QUESTION = "What colour is the shape?"


@pytest.fixture(scope="module")
def eve(tmp_path_factory) -> Pipeline:
    return Pipeline(built_engine("eve", tmp_path_factory)[1])


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("picture") / "shapes.png"
    shapes_image(80).save(path)
    return path


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_one_image_without_a_list_in_every_form(eve, picture):
    want = eve.run(QUESTION, [str(picture)], GREEDY)
    pixels = np.asarray(Image.open(picture).convert("RGB"))
    forms = {"str": str(picture), "Path": picture, "bytes": picture.read_bytes(), "PIL": Image.open(picture),
             "numpy HWC": pixels, "numpy HWC RGBA": np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)]),
             "data: URL": data_url(picture), "file:// URL": picture.resolve().as_uri()}
    for name, image in forms.items():
        answer = eve.run(QUESTION, image, GREEDY)
        assert answer.images == 1 and answer.token_ids == want.token_ids, name
    assert eve.generate(QUESTION, images=str(picture), max_new_tokens=10) == want.text
    assert "".join(eve.generate(QUESTION, images=picture, max_new_tokens=10, stream=True)) == want.text
    assert eve.generate_batch([QUESTION, QUESTION], images=[picture, None], params=GREEDY) == \
        [want.text, eve.generate(QUESTION, params=GREEDY)]
    chat = eve.chat(params=GREEDY)
    assert chat.ask(QUESTION, images=str(picture)).token_ids == want.token_ids and len(chat.images) == 1


def test_numpy_images_that_are_not_hwc_uint8_are_refused(eve):
    for array, shown in ((np.zeros((3, 32, 32), np.uint8), "uint8 (3, 32, 32)"), (np.zeros((32, 32, 3)), "float64")):
        with pytest.raises(ImageError, match="numpy image must be uint8") as refused:
            eve.generate(QUESTION, images=array)
        assert f"got {shown}" in str(refused.value)


def test_chat_messages_openai_and_hugging_face(eve, picture):
    """Each dialect's message list gives the answer the same conversation gives as turns."""
    second = shapes_image(81)
    turns = [("user", f"Rules first.\n\n<image>\n{QUESTION}"), ("assistant", "red"),
             ("user", "<image>\nAnd this one?")]
    want = eve.run(turns, [str(picture), second], GREEDY)
    buffer = io.BytesIO()
    second.save(buffer, "PNG")
    second_b64 = base64.b64encode(buffer.getvalue()).decode()
    openai = [{"role": "system", "content": "Rules first."},
              {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(picture)}},
                                           {"type": "text", "text": QUESTION}]},
              {"role": "assistant", "content": "red"},
              {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{second_b64}"}},
                                           {"type": "text", "text": "And this one?"}]}]
    hugging_face = [{"role": "system", "content": [{"type": "text", "text": "Rules first."}]},
                    {"role": "user", "content": [{"type": "image", "path": str(picture)}, {"type": "text", "text": QUESTION}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                    {"role": "user", "content": [{"type": "image", "image": second},
                                                 {"type": "text", "text": "And this one?"}]}]
    hugging_face_urls = [*hugging_face[:3], {"role": "user", "content": [
        {"type": "image", "base64": second_b64}, {"type": "text", "text": "And this one?"}]}]
    for name, messages in (("openai", openai), ("hf", hugging_face), ("hf base64", hugging_face_urls)):
        assert eve.run(messages, params=GREEDY).token_ids == want.token_ids, name
        assert eve.chat(messages, params=GREEDY) == want.text, name
        assert "".join(eve.chat(messages, max_new_tokens=10, stream=True)) == want.text, name
    assert eve.generate_batch([openai, QUESTION], params=GREEDY)[0] == want.text


def test_chat_message_errors_name_the_field(eve, picture):
    with pytest.raises(AerieError, match="'messages' is empty"):
        eve.generate([])
    with pytest.raises(AerieError, match="messages carry their images"):
        eve.generate([{"role": "user", "content": QUESTION}], images=picture)
    with pytest.raises(AerieError, match=r"messages\[0\].role must be one of"):
        eve.chat([{"role": "robot", "content": QUESTION}])
    with pytest.raises(AerieError, match="an image part needs one of image, url, path, base64"):
        eve.chat([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}])
    with pytest.raises(AerieError, match="last message must be a user message"):
        eve.chat([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "red"}])


def test_remote_images_only_when_allowed(eve, picture):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(picture.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{picture.name}"
    try:
        with pytest.raises(ImageError, match="remote images are not downloaded unless allowed"):
            eve.generate(QUESTION, images=url)
        remote = Pipeline(eve.engine_dir)
        remote.allow_remote_images = True
        assert remote.run(QUESTION, url, GREEDY).token_ids == eve.run(QUESTION, picture, GREEDY).token_ids
        with pytest.raises(ImageError, match="could not download"):
            remote.generate(QUESTION, images=url + ".missing")
    finally:
        server.shutdown()
        server.server_close()


def test_sampling_options_are_checked(eve):
    with pytest.raises(AerieError, match="unknown sampling option 'max_tokens' \\(did you mean max_new_tokens\\?\\)"):
        eve.generate(QUESTION, max_tokens=4)
    with pytest.raises(AerieError, match="seed must be >= 0"):
        eve.generate(QUESTION, seed=-1, temperature=1.0)
    for name in ("temperature", "top_p", "repetition_penalty"):
        with pytest.raises(AerieError, match=f"{name} must be a finite number"):
            eve.generate(QUESTION, **{name: float("nan")})
