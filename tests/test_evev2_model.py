"""EVEv2: the full-size key list equals the one upstream's module tree produces (tests/data/evev2_7b_keys.json
says how it was made), preprocessing gives upstream's sizes, the template upstream's string, and the decoder
routes image positions through the image weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import build_model, load_model
from models.evev2 import EVEv2ForCausalLM, copy_text_weights_into_image_copies
from models.tiny import tiny_evev2_config
from runtime.demo.tiling import tile_layout
from runtime.errors import CheckpointError
from runtime.preprocess import PreprocessSpec, max_image_tokens, preprocess_image
from runtime.templates import get_template

KEYS = Path(__file__).parent / "data" / "evev2_7b_keys.json"

# Qwen2.5-7B-Instruct's config.json plus the fields EVEv2's train.py writes (EVE-7B-HD-v2.0).
PUBLISHED = dict(
    architectures=["EVEQwen2ForCausalLM"], model_type="eve-qwen2", vocab_size=152064, hidden_size=3584,
    intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    use_sliding_window=False, sliding_window=131072, max_window_layers=28, hidden_act="silu", bos_token_id=151643,
    eos_token_id=151645, pad_token_id=151643, torch_dtype="bfloat16",
    mm_vision_tower="openai/eve-anyratio-res1600-patch16", mm_hidden_size=1024, add_moe=True,
    moe_part="layernorm-self_attn-mlp", tune_VE=True, tune_LLM=True, tune_MOE=True, vision_tower_lr=1e-5,
)


def upstream_keys() -> dict[str, list[int]]:
    data = json.loads(KEYS.read_text())
    keys = dict(data["other"])
    for i in range(data["num_layers"]):
        keys.update({f"model.layers.{i}.{suffix}": shape for suffix, shape in data["layer"].items()})
    return keys


def test_full_size_keys_and_shapes_match_upstream():
    with torch.device("meta"):
        model = build_model(PUBLISHED)
        embeds = model.encode_images(torch.empty(1, 3, 1600, 1600))
    assert isinstance(model, EVEv2ForCausalLM)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = upstream_keys()
    assert len(expected) == 681
    assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
    assert {k: s for k, s in ours.items() if expected[k] != s} == {}
    assert embeds.shape == (1, 1 + 50 * 51, 3584)  # 2551 tokens for a square image at 1600
    spec = model.preprocess_spec()
    assert (spec.kind, spec.image_size, spec.patch_stride, spec.conv_stride) == ("eve_anyratio", 1600, 16, 2)
    assert model.chat_template == "eve_qwen2"


@pytest.mark.parametrize("size, resized, tokens", [
    # (width, height) -> upstream process_images' tensor (width, height) and its 1 + h*(w+1) tokens, at 1600.
    ((640, 480), (1856, 1408), 2597), ((480, 640), (1408, 1856), 2611), ((1000, 1000), (1600, 1600), 2551),
    ((33, 700), (352, 7392), 2773), ((3000, 200), (6208, 416), 2536), ((1, 50), (256, 11328), 3187),
    ((777, 333), (2464, 1056), 2575),
])
def test_preprocessing_sizes_match_upstream(size, resized, tokens):
    spec = PreprocessSpec(kind="eve_anyratio", image_size=1600, patch_stride=16, conv_stride=2)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = preprocess_image(image, spec)
    assert out.pixel_values.shape == (1, 3, resized[1], resized[0])
    assert out.num_tokens == tokens == 1 + out.grid[1] * (out.grid[0] + 1)
    assert out.num_tokens <= max_image_tokens(spec) == 1 + 9051 * 2  # a 1 x 32768 image: 9051 rows of 1
    layout = tile_layout(image, spec)  # what the demo page draws: the token grid over the whole image
    assert layout["grid"] == {"cols": out.grid[0], "rows": out.grid[1], "box": [0, 0, *size]}
    assert layout["tokens"] == tokens and "no tiles" in layout["summary"]


def test_template_is_upstream_conv_qwen_v2():
    template = get_template("eve_qwen2")
    assert template.render([("user", "<image>\nWhat is it?"), ("assistant", "A cat."), ("user", "Sure?")]) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is it? ASSISTANT: A cat."
        "<|im_end|>USER: Sure? ASSISTANT:"
    )
    assert template.stop == ("<|im_end|>",)


def test_image_positions_take_the_image_weights(tiny_evev2_dir):
    model = load_model(tiny_evev2_dir)
    vocab = model.text_vocab_size()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 150, 3), dtype=np.uint8))
    inputs = preprocess_image(image, model.preprocess_spec())
    table = model.image_table([inputs])
    assert table.shape == (inputs.num_tokens, 128) and inputs.num_tokens == 1 + 4 * (6 + 1)
    ids = torch.tensor([[5, 6, *range(vocab, vocab + inputs.num_tokens), 7, 8]])
    with torch.no_grad():
        embeds = model.embed(ids, table)
        routed = model(inputs_embeds=embeds, visual_token_mask=ids >= vocab).logits
        text_only = model(inputs_embeds=embeds, visual_token_mask=torch.zeros_like(ids, dtype=torch.bool)).logits
        # The image weights change every position from the first image token on; the two before are causal.
        assert torch.equal(routed[0, :2], text_only[0, :2])
        assert (routed[0, 2:] - text_only[0, 2:]).abs().amax(-1).min() > 1e-3
        with pytest.raises(ValueError, match="visual_token_mask"):
            model(inputs_embeds=embeds)


def test_copied_image_weights_compute_what_the_text_weights_do(tiny_evev2_dir):
    """Upstream's initialisation of the image copies from the LLM: routing then changes nothing, until training."""
    model = load_model(tiny_evev2_dir)
    ids = torch.arange(3, 15)[None]
    embeds = model.embed(ids, None)
    image_everywhere, text_everywhere = torch.ones_like(ids, dtype=torch.bool), torch.zeros_like(ids, dtype=torch.bool)
    with torch.no_grad():
        assert not torch.allclose(model(inputs_embeds=embeds, visual_token_mask=image_everywhere).logits,
                                  model(inputs_embeds=embeds, visual_token_mask=text_everywhere).logits)
        copy_text_weights_into_image_copies(model)
        torch.testing.assert_close(model(inputs_embeds=embeds, visual_token_mask=image_everywhere).logits,
                                   model(inputs_embeds=embeds, visual_token_mask=text_everywhere).logits)


def test_only_the_published_moe_layout_is_built():
    with pytest.raises(CheckpointError, match="moe_part 'layernorm-mlp'.*'layernorm-self_attn-mlp'"):
        build_model(tiny_evev2_config(320, moe_part="layernorm-mlp"))
    with pytest.raises(CheckpointError, match="add_moe False"):
        build_model(tiny_evev2_config(320, add_moe=False))


def test_no_tensorrt_llm_checkpoint_is_written(tiny_evev2_dir, tmp_path):
    """A Qwen2 subclass, but never mistaken for plain Qwen2: its image weights would be dropped silently."""
    from export.trtllm import write_trtllm_checkpoint

    with pytest.raises(CheckpointError, match="TensorRT-LLM cannot route each position"):
        write_trtllm_checkpoint(load_model(tiny_evev2_dir), tmp_path / "trtllm")


def test_the_manifest_names_the_mask_and_the_runtime_feeds_it(tmp_path_factory):
    """Only EVEv2's decoder part names visual_token_mask; without it the runtime refuses the graph."""
    from runtime.backends.ort_decoder import OrtDecoder
    from runtime.errors import ManifestError
    from runtime.manifest import read_manifest
    from tiny_engines import built_engine

    _, engine, _ = built_engine("evev2", tmp_path_factory)
    part = read_manifest(engine).parts["decoder"]
    assert part["io"]["visual_token_mask"] == "visual_token_mask" and part["architecture"] == "qwen2"
    assert OrtDecoder(engine, part, threads=1).routed
    unnamed = {**part, "io": {k: v for k, v in part["io"].items() if k != "visual_token_mask"}}
    with pytest.raises(ManifestError, match="input 'visual_token_mask' the manifest does not name"):
        OrtDecoder(engine, unnamed, threads=1)
