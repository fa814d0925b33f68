"""The training objective's shortcuts compute the same function: the shared system-prompt prefix and the
batched vision call give the losses and gradients of the plain computation."""

from __future__ import annotations

import pytest
import torch

from models.checkpoint import load_model
from runtime.templates import get_template
from runtime.tokenizer import Tokenizer
from runtime.eval import synthetic
from training.dataset import ConversationDataset, collate
from training.llava import Record, SkipLog, read_records
from training.objective import TrainingObjective, image_table, shared_prefix_length
from training.trainer import TRAINING_ONLY


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Five image questions and one text-only conversation."""
    out = synthetic.generate(tmp_path_factory.mktemp("synth"), train=5, val=0, test=0, seed=5, progress=False)
    text_only = Record("inline:1", [("user", "What colour is the sky?"), ("assistant", "blue")], None, None)
    return read_records(out / "train.json") + [text_only]


def batch_for(checkpoint, records, template: str, teacher: bool):
    model = load_model(checkpoint, training=True, allow_missing=TRAINING_ONLY)  # a random CLIP teacher
    tok = Tokenizer.from_dir(checkpoint)
    ds = ConversationDataset(records, tok, get_template(template), model.preprocess_spec(), model.text_vocab_size(), 512,
                             SkipLog(), teacher=teacher)
    return model, collate([ds[i] for i in range(len(ds))], model.text_vocab_size(), tok.pad_id)


def loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    ce, pal = TrainingObjective(model, **kwargs)(batch)
    (ce / 10 + pal).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return ce.item(), pal.item(), grads


@pytest.mark.parametrize("family", ["eve", "eagle2_5", "evev2"])
def test_shared_prefix_gives_the_same_loss_and_gradients(family, request, records):
    checkpoint, template = {"eve": ("tiny_eve_dir", "vicuna_v1"), "eagle2_5": ("tiny_eagle25_dir", "qwen2_chatml"),
                            "evev2": ("tiny_evev2_dir", "eve_qwen2")}[family]
    checkpoint = request.getfixturevalue(checkpoint)
    patch_align = family == "eve"
    model, batch = batch_for(checkpoint, records, template, teacher=patch_align)
    assert shared_prefix_length(batch.input_ids, batch.labels, model.text_vocab_size()) >= 8
    ce0, pal0, g0 = loss_and_grads(model, batch, patch_align=patch_align, share_prefix=False)
    ce1, pal1, g1 = loss_and_grads(model, batch, patch_align=patch_align, share_prefix=True)
    assert ce1 == pytest.approx(ce0, rel=1e-5) and pal1 == pytest.approx(pal0, rel=1e-5, abs=1e-6)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


def test_prefix_stops_before_the_first_supervised_token():
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 5, 6, 7, 9]])
    labels = torch.full_like(ids, -100)
    assert shared_prefix_length(ids, labels, vocab_size=100) == 4
    labels[0, 3] = 7  # token 3 is supervised: the prediction made at position 2 must stay outside the prefix
    assert shared_prefix_length(ids, labels, vocab_size=100) == 2
    image_ids = torch.tensor([[1, 5, 150, 7], [1, 5, 150, 7]])
    assert shared_prefix_length(image_ids, torch.full_like(image_ids, -100), vocab_size=100) == 2


def test_batched_vision_call_equals_one_image_at_a_time(tiny_eagle25_dir, records):
    model, batch = batch_for(tiny_eagle25_dir, records, "qwen2_chatml", teacher=False)
    with torch.no_grad():
        torch.testing.assert_close(image_table(model, batch.images), model.image_table(batch.images), rtol=1e-5, atol=1e-6)


def test_evev2_image_positions_train_the_image_copies(tiny_evev2_dir, records):
    """The objective passes EVEv2's modality mask: with images in the batch the `moe_*` weights get gradients
    (all of them in the first layer; in the last, image outputs carry no loss, only the keys and values text
    attends to); on text alone none does; the text weights do either way."""
    with_images = [r for r in records if r.image is not None]
    text_only = [r for r in records if r.image is None]
    for batch_records, image_copies_learn in ((with_images, True), (text_only, False)):
        model, batch = batch_for(tiny_evev2_dir, batch_records, "eve_qwen2", teacher=False)
        _, _, grads = loss_and_grads(model, batch, patch_align=False)
        learns = {name: name in grads and bool(grads[name].abs().sum() > 0)
                  for name, _ in model.named_parameters() if name.startswith("model.layers.")}
        assert all(on for name, on in learns.items() if ".moe_" not in name)
        first_layer_copies = [on for name, on in learns.items() if name.startswith("model.layers.0.") and ".moe_" in name]
        assert len(first_layer_copies) == 12 and all(on == image_copies_learn for on in first_layer_copies)
        assert any(on for name, on in learns.items() if ".moe_" in name) == image_copies_learn
