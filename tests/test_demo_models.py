"""The bundled demo models (examples/*, trained by training/): each builds with build.py from the repository as
it is (the self-check against PyTorch included), its fp32 engine answers the synthetic test questions token for
token as the PyTorch oracle does, its vision rows match within 1e-4, and it answers the README's sample images
as its model card says."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.engines import torch_pipeline
from runtime.backends.ort_vision import OrtVisionEngine
from runtime.eval.exact_match import exact_match
from runtime.pipeline import Pipeline
from runtime.preprocess import preprocess_image
from runtime.sampling import SamplingParams
from tiny_engines import run_build, synthetic_test_split

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMOS = sorted(p.parent.name for p in EXAMPLES.glob("*/config.json"))
# The sample images' questions and answers (examples/images/README.md): the skills every demo model learned.
SAMPLES = (("shapes.png", "What colour is the shape?", "red"), ("count.png", "How many shapes are there?", "3"))
GREEDY = SamplingParams(max_new_tokens=8)


def test_every_family_has_a_demo_model():
    assert {"eve-tiny", "eagle_x5-tiny", "eagle2_5-tiny", "eagle2-tiny", "evev2-tiny"} <= set(DEMOS)


@pytest.fixture(scope="module", params=DEMOS)
def demo(request, tmp_path_factory):
    checkpoint = EXAMPLES / request.param
    engine = tmp_path_factory.mktemp(request.param) / "engine"
    code, out, err = run_build([str(checkpoint), "--out", str(engine)])
    assert code == 0, out + err
    assert "self-check" in out
    return checkpoint, engine


def test_greedy_tokens_equal_the_oracle_on_the_test_split(demo):
    checkpoint, engine = demo
    oracle, pipe = torch_pipeline(checkpoint), Pipeline(engine, max_batch=4, threads=1)
    cases = synthetic_test_split(36)  # four of each category
    answers = pipe.run_batch([q for q, _ in cases], [i for _, i in cases], GREEDY)
    for (question, images), answer in zip(cases, answers):
        assert answer.token_ids == oracle.run(question, images, GREEDY).token_ids, question
    print(f"\n{checkpoint.name}: {len(cases)} prompts of the synthetic test split, greedy tokens identical to PyTorch")


def test_vision_rows_match_the_oracle(demo):
    """Within 1e-4 of PyTorch fp32, or, where the rows are large (hundreds) and 1e-4 is below float32's
    rounding, no farther from the exact (float64) rows than PyTorch fp32 itself is."""
    checkpoint, engine = demo
    oracle = torch_pipeline(checkpoint)
    exact = copy.deepcopy(oracle.vision.model).double()
    ort_engine = OrtVisionEngine(engine / "vision" / "model.onnx", threads=1)
    for name, _, _ in SAMPLES:
        pixels = preprocess_image(Image.open(EXAMPLES / "images" / name), oracle.spec).trimmed()
        got, want = ort_engine.encode(pixels), oracle.vision.encode(pixels)
        with torch.no_grad():
            rows64 = exact.encode_images(torch.from_numpy(pixels).double()).reshape(want.shape).numpy()
        engine_err, torch_err = np.abs(got - rows64).max(), np.abs(want - rows64).max()
        print(f"\n{checkpoint.name} {name}: |engine - torch| {np.abs(got - want).max():.1e}, "
              f"from float64: engine {engine_err:.1e}, torch {torch_err:.1e} (rows up to {np.abs(rows64).max():.0f})")
        assert np.abs(got - want).max() < 1e-4 or engine_err <= 2 * torch_err, name


@pytest.mark.parametrize("image,question,answer", SAMPLES)
def test_answers_the_sample_images(demo, image, question, answer):
    _, engine = demo
    text = Pipeline(engine, threads=1).generate(question, images=[str(EXAMPLES / "images" / image)], max_new_tokens=8)
    assert exact_match(text, [answer]), f"{question} -> {text!r}, expected {answer!r}"
