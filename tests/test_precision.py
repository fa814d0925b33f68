"""Computing in float32 from float16 weights a block at a time (models/precision.py), as the PyTorch engines do
for real-size checkpoints: the same numbers as the model converted to float32 whole, every family, whether the
blocks are whole models or single layers; the stored weights untouched afterwards, also after a failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import load_model, save_model
from models.engines import TorchDecoder, TorchVision
from models.precision import float32_bytes, float32_compute, parameters_as
from runtime.preprocess import preprocess_image
from tiny_engines import synthetic_test_split


@pytest.fixture(scope="module", params=["eve", "eagle2_5", "eagle_v1"])
def half_checkpoint(request, tmp_path_factory):
    """A tiny checkpoint of each family saved in float16, as the releases are."""
    from conftest import make_tiny_checkpoint

    full = make_tiny_checkpoint(tmp_path_factory.mktemp(f"full_{request.param}"), request.param)
    half = tmp_path_factory.mktemp(f"half_{request.param}")
    save_model(load_model(full).half(), half)
    return half


def layer_bytes(model) -> int:
    """A block size that holds one decoder layer but not two: the tower and the decoder are split into layers."""
    return float32_bytes(model.decoder.model.layers[0]) + 1


@pytest.mark.parametrize("blocks", ["whole", "layers"])
def test_float32_compute_equals_the_float32_model(half_checkpoint, blocks):
    stored = load_model(half_checkpoint)
    assert {p.dtype for p in stored.parameters()} == {torch.float16}
    reference = load_model(half_checkpoint, dtype=torch.float32)
    block_bytes = float32_bytes(stored) if blocks == "whole" else layer_bytes(stored)
    (question, [image]), = synthetic_test_split(1)
    pixels = preprocess_image(image, stored.preprocess_spec()).trimmed()
    with torch.no_grad(), float32_compute(stored, block_bytes):
        rows = stored.encode_images(torch.from_numpy(pixels))
        ids = torch.tensor([[1, 5, 17, 42, 7]])
        logits = stored.decoder(input_ids=ids).logits
    with torch.no_grad():
        want_rows = reference.encode_images(torch.from_numpy(pixels))
        want_logits = reference.decoder(input_ids=ids).logits
    assert rows.dtype == logits.dtype == torch.float32
    torch.testing.assert_close(rows, want_rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    assert {p.dtype for p in stored.parameters()} == {torch.float16}, "the stored weights come back"


def test_engines_compute_in_float32_from_float16_weights(half_checkpoint):
    """The torch engines (the oracle every engine is compared with) give float32 results equal to the float32
    model's: vision rows and the logits of a prompt with image rows."""
    stored, reference = load_model(half_checkpoint), load_model(half_checkpoint, dtype=torch.float32)
    (_, [image]), = synthetic_test_split(1)
    pixels = preprocess_image(image, stored.preprocess_spec()).trimmed()
    rows = TorchVision(stored).encode(pixels)
    np.testing.assert_allclose(rows, TorchVision(reference).encode(pixels), rtol=1e-5, atol=1e-5)
    vocab = stored.text_vocab_size()
    ids = np.concatenate([[1, 5, 9], vocab + np.arange(len(rows)), [7, 3]])
    got = TorchDecoder(stored.decoder).prefill(0, ids, rows)
    want = TorchDecoder(reference.decoder).prefill(0, ids, rows)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weights_come_back_after_a_failing_forward(half_checkpoint):
    stored = load_model(half_checkpoint)
    before = {name: (p.data_ptr(), p.dtype) for name, p in stored.named_parameters()}
    with pytest.raises(RuntimeError), torch.no_grad(), float32_compute(stored, layer_bytes(stored)):
        stored.decoder(inputs_embeds=torch.zeros(1, 2, 3))  # the wrong width: the first layer fails
    assert {name: (p.data_ptr(), p.dtype) for name, p in stored.named_parameters()} == before


def test_parameters_as_casts_for_the_block_only(half_checkpoint):
    stored = load_model(half_checkpoint)
    params = stored.vision_parameters()
    with parameters_as(params, torch.float32):
        assert {p.dtype for p in params} == {torch.float32}
        assert stored.decoder.model.layers[0].mlp.up_proj.weight.dtype == torch.float16
    assert {p.dtype for p in params} == {torch.float16}
