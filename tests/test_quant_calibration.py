"""Calibration data with the images in it: every sample is a whole templated exchange whose image positions
hold the model's own image rows, as at inference; bad data fails in one line naming what to fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.checkpoint import load_model
from quant.calibration import calibration_set, sample_ids, spread
from quant.errors import QuantizationError
from runtime.eval.readers import read_llava_conversations
from runtime.image_io import load_image
from runtime.preprocess import preprocess_image
from runtime.tokenizer import Tokenizer

CHECKPOINTS = {"eve": "tiny_eve_dir", "eagle2_5": "tiny_eagle25_dir"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from runtime.eval.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), train=0, val=0, test=9, progress=False)


@pytest.mark.parametrize("family", CHECKPOINTS)
def test_image_rows_are_spliced_into_the_whole_exchange(family, data, request):
    checkpoint = request.getfixturevalue(CHECKPOINTS[family])
    model, tokenizer = load_model(checkpoint), Tokenizer.from_dir(checkpoint)
    calib = calibration_set(model, tokenizer, data / "test.json", num_samples=3, max_length=512, progress=False)
    questions = read_llava_conversations(data / "test.json")[::3]  # three of nine, evenly spaced
    assert len(calib) == 3 and len(calib.pixels) == 3
    vocab = model.text_vocab_size()
    embed_tokens = model.decoder.get_input_embeddings().weight.detach()
    for i, question in enumerate(questions):
        inputs = preprocess_image(load_image(question.image), model.preprocess_spec())
        with torch.no_grad():
            table = model.image_table([inputs])
        ids = torch.from_numpy(sample_ids(model, tokenizer, question, table.shape[0]))
        rows = calib.embeds[i][0]
        is_image = ids >= vocab
        assert calib.image_positions[i] == int(is_image.sum()) == table.shape[0]
        torch.testing.assert_close(rows[is_image], table, rtol=0, atol=0)  # the model's own rows, in order
        torch.testing.assert_close(rows[~is_image], embed_tokens[ids[~is_image]], rtol=0, atol=0)
        np.testing.assert_array_equal(calib.pixels[i], inputs.trimmed())
        # the whole exchange: the question, then the answer
        text = tokenizer.decode(ids[~is_image].tolist())
        assert question.text in text and question.answers[0] in text.split(question.text)[1]


def test_samples_are_cut_to_the_length(tiny_eve_dir, data):
    model = load_model(tiny_eve_dir)
    calib = calibration_set(model, Tokenizer.from_dir(tiny_eve_dir), data / "test.json", num_samples=2, max_length=8,
                            progress=False)
    assert [e.shape[1] for e in calib.embeds] == [8, 8]


def test_spread_takes_samples_across_the_file():
    assert spread(list(range(9)), 3) == [0, 3, 6]
    assert spread(list(range(4)), 9) == [0, 1, 2, 3]
    assert len(set(spread(list(range(900)), 64))) == 64


def test_bad_data_fails_naming_it(tiny_eve_dir, data, tmp_path):
    model, tokenizer = load_model(tiny_eve_dir), Tokenizer.from_dir(tiny_eve_dir)
    with pytest.raises(QuantizationError, match="calibration data: .*no such file"):
        calibration_set(model, tokenizer, tmp_path / "absent.json", progress=False)
    records = json.loads((data / "test.json").read_text())[:2]
    records[1]["image"] = "images/missing.png"
    (tmp_path / "bad.json").write_text(json.dumps(records))
    with pytest.raises(QuantizationError, match=f"calibration sample {records[1]['id']}: "):
        calibration_set(model, tokenizer, tmp_path / "bad.json", images=data, progress=False)
    with pytest.raises(QuantizationError, match="at least 1 sample"):
        calibration_set(model, tokenizer, data / "test.json", num_samples=0, progress=False)


def test_text_only_calibration_leaves_the_image_rows_out(tiny_eve_dir, data):
    """The comparison mode (--calib-text-only): the same exchanges without their image rows; the vision graph
    still gets the images."""
    model, tokenizer = load_model(tiny_eve_dir), Tokenizer.from_dir(tiny_eve_dir)
    calib = calibration_set(model, tokenizer, data / "test.json", num_samples=2, progress=False, text_only=True)
    question = read_llava_conversations(data / "test.json")[0]
    ids = sample_ids(model, tokenizer, question, None)
    assert calib.image_positions == [0, 0] and len(calib.pixels) == 2
    embed_tokens = model.decoder.get_input_embeddings().weight.detach()
    torch.testing.assert_close(calib.embeds[0][0], embed_tokens[torch.from_numpy(ids)], rtol=0, atol=0)
