"""The PyTorch reference models against independent restatements of the references' computations: EVE's
patch-embedding layer (unfold windows, nonzero crop), its patch-aligning loss, Eagle2.5's pixel shuffle;
the splice of image rows at the placeholders; deterministic generation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.checkpoint import build_model, load_model
from models.engines import torch_pipeline
from models.tiny import tiny_eve_config
from models.vlm import embed_with_images
from runtime.generate import Generator, Request
from runtime.preprocess import eve_teacher_input, preprocess_image
from runtime.sampling import SamplingParams


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def eve(tiny_eve_dir):
    return load_model(tiny_eve_dir)


@pytest.fixture(scope="module")
def eagle(tiny_eagle25_dir):
    return load_model(tiny_eagle25_dir)


# ---------------------------------------------------------------------------------------------- EVE PEL


def reference_local_attention(m, features: torch.Tensor) -> torch.Tensor:
    """EVEv1 LocalAttention.forward: windows by unfold."""
    s = m.conv_stride
    reduce = F.avg_pool2d(features, kernel_size=s, stride=s)
    b, c, _, _ = features.shape
    _, _, h, w = reduce.shape
    reduce = reduce.flatten(2).transpose(-2, -1)
    q = m.q(reduce).reshape(b, h * w, m.num_heads, -1).permute(0, 2, 1, 3).unsqueeze(-2)
    windows = features.unfold(2, s, s).unfold(3, s, s).contiguous().view(b, c, h * w, s, s)
    kv = m.kv(windows.flatten(3).permute(0, 2, 3, 1)).reshape(b, h * w, s * s, 2, m.num_heads, -1).permute(3, 0, 4, 1, 2, 5)
    attn = (q * m.scale * kv[0]).sum(-1).softmax(dim=-1)
    agg = (attn.unsqueeze(-1) * kv[1]).sum(-2).transpose(1, 2).reshape(b, h * w, -1)
    return reduce + m.proj(agg)


def reference_global_attention(m, class_feature: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    b, n, _ = features.shape
    class_feature = class_feature.repeat(b, 1, 1)
    q = m.q(class_feature).reshape(b, 1, m.num_heads, -1).transpose(1, 2)
    kv = m.kv(features).reshape(b, n, 2, m.num_heads, -1).permute(2, 0, 3, 1, 4)
    attn = (q * m.scale * kv[0]).sum(-1).softmax(dim=-1)
    return class_feature + m.proj((attn.unsqueeze(-1) * kv[1]).sum(-2).reshape(b, 1, -1))


def reference_pel(tower, pixel_values: torch.Tensor) -> torch.Tensor:
    """EVEv1 VisionTokenizer.forward for one image: crop to the first..last nonzero mask patch, local and
    global attention, a split embedding after every row."""
    pixels, masks = pixel_values[:, :-1], pixel_values[:, -1:]
    patch_embeds = tower.patch_embedding(pixels)
    patch_masks = F.avg_pool2d(masks, kernel_size=tower.patch_stride, stride=tower.patch_stride)
    assert len(torch.where(patch_masks % 1)[0]) == 0  # the mask is patch-aligned, as the reference asserts
    nonzero = torch.nonzero(patch_masks[0, 0], as_tuple=False)
    (h1, w1), (h2, w2) = nonzero[0], nonzero[-1]
    embed = patch_embeds[0, :, h1 : h2 + 1, w1 : w2 + 1]
    h, w = embed.shape[1] // tower.conv_stride, embed.shape[2] // tower.conv_stride
    embed = reference_local_attention(tower.local_attention, embed.unsqueeze(0))
    cls = reference_global_attention(tower.global_attention, tower.class_embedding[None, None, :], embed)[0]
    embed = embed.transpose(-2, -1).reshape(-1, h, w)
    split = tower.split_embedding[:, None, None].repeat(1, h, 1)
    embed = torch.cat([embed, split], dim=-1).flatten(1).transpose(0, 1)
    return torch.cat([cls, embed], dim=0)


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (90, 90), (400, 30)])
@torch.no_grad()
def test_eve_pel_matches_reference(eve, size):
    spec = eve.preprocess_spec()
    image = preprocess_image(noise(*size, seed=size[0]), spec)
    pixels = torch.from_numpy(image.pixel_values)
    expected = eve.model.mm_projector(reference_pel(eve.model.vision_tower, pixels))
    got = eve.encode_images(pixels)[0]
    assert got.shape == (image.num_tokens, eve.config.hidden_size)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Cropping by the mask on the padded canvas equals running the trimmed input (what engines get).
    trimmed = eve.encode_images(torch.from_numpy(image.trimmed()))[0]
    torch.testing.assert_close(trimmed, got, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_eve_row_layout_cls_then_rows_with_split(eve):
    spec = eve.preprocess_spec()
    image = preprocess_image(noise(300, 150), spec)
    w, h = image.grid
    tokens = eve.model.vision_tower(torch.from_numpy(image.pixel_values))
    assert tokens.shape[0] == 1 + h * (w + 1)
    split = eve.model.vision_tower.split_embedding
    rows = tokens[1:].reshape(h, w + 1, -1)
    for r in range(h):
        torch.testing.assert_close(rows[r, w], split)  # the last of every row is <SPL>
        assert not torch.allclose(rows[r, 0], split)


# ---------------------------------------------------------------------------------------------- EVE PAL


def reference_pal_loss(model, all_features: torch.Tensor, start: int, hw: tuple[int, int], images: torch.Tensor) -> torch.Tensor:
    """EVEv1 VisionCompressor.forward for a batch of one image: all_features [1, N, L, D], patch_hw (h, w)."""
    pal = model.model.vision_tower_compressor
    H, W = hw
    _, N, L, D = all_features.shape
    clip_masks = F.avg_pool2d(images[:, -1:], kernel_size=model.config.patch_stride, stride=model.config.patch_stride)
    clip_features = model.model.vision_clip.backbone.vision_model(
        images[:, :-1], output_hidden_states=True).hidden_states[model.config.mm_vision_select_layer][:, 1:]
    features = all_features[0, start : start + min(N, H * (W + 1) + 1)]
    features = features.permute(1, 2, 0)[:, :, 1:].reshape(L, D, H, W + 1)[:, :, :, :-1]
    if pal.patch_ratio > 1:
        features = F.avg_pool2d(features, kernel_size=pal.patch_ratio, stride=pal.patch_ratio)
    features = features.flatten(2).permute(2, 0, 1)
    layer_idx = model.config.num_hidden_layers - torch.arange(0, model.config.num_hidden_layers + 1, model.config.pal_layer_rate)
    stacked = torch.stack([pal.norm_layer[j](features[:, layer_idx[j]]) for j in range(len(layer_idx))], dim=1)
    n, layers, c = stacked.shape
    q = stacked[:, :1].reshape(n, 1, pal.num_heads, -1).transpose(1, 2)
    kv = stacked[:, 1:].reshape(n, layers - 1, pal.num_heads, -1).transpose(1, 2)
    fused = ((q * pal.scale * kv).sum(-1).softmax(dim=-1).unsqueeze(-1) * kv).sum(-2)
    pred = pal.input_layer(features[:, -1]) + pal.output_layer(fused.reshape(n, -1))
    target = clip_features[0][clip_masks[0, 0].view(-1).bool()]
    return 1 - torch.nn.CosineSimilarity(dim=-1)(pred, target).mean()


@pytest.mark.parametrize("image_size,size", [(112, (300, 150)), (224, (150, 300))], ids=["ratio1", "ratio2-pooled"])
def test_eve_patch_align_loss_matches_reference_and_backpropagates(image_size, size):
    torch.manual_seed(0)
    model = build_model(tiny_eve_config(300, image_size=image_size), training=True).train()
    spec = model.preprocess_spec()
    image = noise(*size)
    inputs = preprocess_image(image, spec)
    clip_pixels = torch.from_numpy(eve_teacher_input(image, spec))
    vocab = model.text_vocab_size()
    start = 3
    ids = torch.tensor([[1, 20, 21, *range(vocab, vocab + inputs.num_tokens), 22, 23]])
    table = model.image_table([inputs])
    out = model(inputs_embeds=model.embed(ids, table), output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    loss = model.patch_align_loss(out.hidden_states, [start], [inputs.grid], clip_pixels)
    w, h = inputs.grid
    expected = reference_pal_loss(model, torch.stack(out.hidden_states, dim=2), start, (h, w), clip_pixels)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert 0 < loss.item() < 2
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["model.vision_tower_compressor.input_layer.weight"].abs().sum() > 0
    assert grads["model.vision_tower_compressor.norm_layer.0.1.weight"].abs().sum() > 0
    # The loss reaches the patch-embedding layer through the LLM's hidden states.
    assert grads["model.vision_tower.patch_embedding.weight"].abs().sum() > 0
    assert grads["model.mm_projector.0.weight"].abs().sum() > 0
    # The CLIP teacher is frozen.
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("model.vision_clip."))


def test_eve_patch_align_loss_text_only_sample_is_zero():
    torch.manual_seed(0)
    model = build_model(tiny_eve_config(300), training=True).train()
    ids = torch.tensor([[1, 20, 21, 22]])
    out = model(inputs_embeds=model.embed(ids, None), output_hidden_states=True)
    clip_pixels = torch.zeros(1, 4, 56, 56)
    loss = model.patch_align_loss(out.hidden_states, [None], [None], clip_pixels)
    assert abs(loss.item()) < 1e-6
    loss.backward()  # still a graph through the aligner, as the reference keeps it


# ---------------------------------------------------------------------------------------------- Eagle2.5


def reference_pixel_shuffle(x: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
    """InternVL/Eagle pixel_shuffle, ps_version v2."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    return x.permute(0, 2, 1, 3).contiguous()


@torch.no_grad()
def test_eagle2_5_encode_images_matches_reference(eagle):
    spec = eagle.preprocess_spec()
    image = preprocess_image(noise(120, 60), spec)
    pixels = torch.from_numpy(image.pixel_values)
    assert pixels.shape[0] == 3  # 2x1 grid + thumbnail
    vit = eagle.vision_model.vision_model(pixel_values=pixels).last_hidden_state
    side = int(vit.shape[1] ** 0.5)
    shuffled = reference_pixel_shuffle(vit.reshape(vit.shape[0], side, side, -1), eagle.config.downsample_ratio)
    expected = eagle.mlp1(shuffled.reshape(shuffled.shape[0], -1, shuffled.shape[-1]))
    got = eagle.encode_images(pixels)
    assert got.shape == (3, eagle.config.tokens_per_tile, eagle.config.text_config.hidden_size)
    torch.testing.assert_close(got, expected)
    assert image.num_tokens == 3 * eagle.config.tokens_per_tile


def test_eagle2_5_spec_follows_the_config():
    from models.eagle2_5 import Eagle25Config, Eagle25ForConditionalGeneration
    from models.tiny import tiny_eagle2_5_config

    config = Eagle25Config(**{**tiny_eagle2_5_config(300), "min_dynamic_tiles": 2, "max_dynamic_tiles": 9})
    spec = Eagle25ForConditionalGeneration.preprocess_spec(SimpleNamespace(config=config))
    assert (spec.image_size, spec.tokens_per_tile, spec.min_tiles, spec.max_tiles) == (56, 4, 2, 9)
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)
    fixed = Eagle25Config(**{**tiny_eagle2_5_config(300), "min_dynamic_tiles": 2, "dynamic_image_size": False})
    spec = Eagle25ForConditionalGeneration.preprocess_spec(SimpleNamespace(config=fixed))
    assert (spec.min_tiles, spec.max_tiles) == (1, 1)


# ---------------------------------------------------------------------------------------------- the splice


@pytest.mark.parametrize("family", ["eve", "eagle2_5"])
@torch.no_grad()
def test_image_rows_land_exactly_at_the_placeholders(family, tiny_eve_dir, tiny_eagle25_dir):
    pipe = torch_pipeline(tiny_eve_dir if family == "eve" else tiny_eagle25_dir)
    model, tok = pipe.vision.model, pipe.tokenizer
    pictures = [noise(90, 60, seed=1), noise(50, 100, seed=2)]
    images = [preprocess_image(p, pipe.spec) for p in pictures]
    request = pipe.prepare([("user", "Compare <image> with <image> please.")], pictures).request
    ids, table = request.input_ids, request.image_table
    vocab = model.text_vocab_size()
    n1, n2 = images[0].num_tokens, images[1].num_tokens
    assert table.shape == (n1 + n2, model.text_hidden_size())
    positions = np.flatnonzero(ids >= vocab)
    assert len(positions) == n1 + n2
    # Two contiguous spans, in prompt order, addressing rows 0..n1-1 then n1..n1+n2-1.
    first, second = positions[:n1], positions[n1:]
    assert (np.diff(first) == 1).all() and (np.diff(second) == 1).all() and second[0] > first[-1] + 1
    assert (ids[first] - vocab).tolist() == list(range(n1)) and (ids[second] - vocab).tolist() == list(range(n1, n1 + n2))
    if family == "eagle2_5":
        for span in (first, second):
            assert ids[span[0] - 1] == tok.token_id("<img>") and ids[span[-1] + 1] == tok.token_id("</img>")
    embeds = pipe.decoder.embed(ids, table)[0]
    torch.testing.assert_close(embeds[first], model.encode_images(torch.from_numpy(images[0].trimmed())).reshape(n1, -1))
    torch.testing.assert_close(embeds[second], model.encode_images(torch.from_numpy(images[1].trimmed())).reshape(n2, -1))
    text = np.flatnonzero(ids < vocab)
    token_table = model.decoder.get_input_embeddings().weight
    torch.testing.assert_close(embeds[text], token_table[torch.from_numpy(ids[text])])


def test_embed_with_images_without_a_table():
    table = torch.nn.Embedding(10, 4)
    ids = torch.tensor([[0, 3, 9]])
    torch.testing.assert_close(embed_with_images(table, ids, None), table(ids))
    rows = torch.randn(2, 4)
    mixed = embed_with_images(table, torch.tensor([[1, 10, 11, 2]]), rows)
    torch.testing.assert_close(mixed[0, 1:3], rows)
    torch.testing.assert_close(mixed[0, [0, 3]], table(torch.tensor([1, 2])))


# ---------------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("family", ["eve", "eagle2_5"])
@torch.no_grad()
def test_generation_is_deterministic_and_matches_full_recompute(family, tiny_eve_dir, tiny_eagle25_dir):
    """The PyTorch model through the runtime's generation loop (models/engines.py: its KV cache per slot)."""
    pipe = torch_pipeline(tiny_eve_dir if family == "eve" else tiny_eagle25_dir)
    model = pipe.vision.model
    image = noise(80, 60)
    request = pipe.prepare("What colour is the shape?", [image]).request
    ids, table = request.input_ids, request.image_table

    def generate(params: SamplingParams, eos_ids=()) -> list[int]:
        return Generator(pipe.decoder, pipe.tokenizer, eos_ids).generate([Request(ids, table, params)])[0].token_ids

    greedy = SamplingParams(max_new_tokens=5)
    first = generate(greedy)
    assert first == generate(greedy) and len(first) == 5
    # The KV-cache loop picks what a full forward over prompt + answer picks at every step.
    full = np.concatenate([ids, first])
    logits = model.decoder(inputs_embeds=pipe.decoder.embed(full, table)).logits[0]
    assert logits[len(ids) - 1 : -1].argmax(-1).tolist() == first
    # Seeded sampling repeats itself; another seed gives another answer.
    sampled = SamplingParams(max_new_tokens=5, temperature=1.5, seed=7)
    a = generate(sampled)
    assert a == generate(sampled)
    assert a != generate(SamplingParams(max_new_tokens=5, temperature=1.5, seed=8))
    # An EOS id ends generation without being returned.
    assert generate(greedy, eos_ids={first[2]}) == first[: first.index(first[2])]


@pytest.mark.parametrize("family", ["eve", "eagle2_5"])
def test_oracle_text_is_reproducible(family, tiny_eve_dir, tiny_eagle25_dir):
    pipe = torch_pipeline(tiny_eve_dir if family == "eve" else tiny_eagle25_dir)
    image = noise(64, 64)
    params = SamplingParams(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3)
    first = pipe.run("Describe the image.", [image], params)
    second = pipe.run("Describe the image.", [image], params)
    assert first.text == second.text and first.token_ids == second.token_ids
    # The text is the decoded tokens, cut at a stop string if one appeared.
    assert pipe.tokenizer.decode(first.token_ids).startswith(first.text)
