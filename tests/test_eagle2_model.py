"""Eagle2 (config.json `model_type: eagle_chat`): the full-size 1B and 2B module trees on the meta device carry
exactly the keys upstream's module tree produces (tests/data/eagle2_keys.txt), config.json is read and written
under upstream's field names, and what Aerie does not build (Eagle2-9B's SigLIP + ConvNeXt tower, LoRA-wrapped
weights) is refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import build_model, save_model
from models.registry import FAMILIES, is_ignored
from models.tiny import tiny_eagle2_config
from runtime.errors import CheckpointError

KEYS = Path(__file__).parent / "data" / "eagle2_keys.txt"

# SigLIP-so400m at 448 (27 layers) for both; the decoders are Qwen2.5-0.5B-Instruct and Qwen2.5-1.5B-Instruct
# (models.md A6). Only the layer counts shape the key list; the widths make the meta model full-size.
SIGLIP = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
              num_attention_heads=16, patch_size=14, image_size=448)
QWEN2_5 = {
    "1b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
               num_key_value_heads=2, tie_word_embeddings=True),
    "2b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
               num_key_value_heads=2, tie_word_embeddings=True),
}


def published_config(variant: str) -> dict:
    """The fields of an Eagle2 config.json (HF `configuration_eagle2.py` names, models.md A6 values)."""
    llm = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=151674, rope_theta=1000000.0,
               max_position_embeddings=32768, rms_norm_eps=1e-6, **QWEN2_5[variant])
    return dict(architectures=["Eagle2ChatModel"], model_type="eagle_chat", vision_config=SIGLIP, llm_config=llm,
                select_layer=-1, force_image_size=448, downsample_ratio=0.5, template="qwen2-chat",
                dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1, max_dynamic_patch=12,
                use_backbone_lora=0, use_llm_lora=0, keep_aspect_ratio=False, pre_feature_reduction=False,
                mlp_checkpoint=True, torch_dtype="bfloat16")


def upstream_keys(vision_layers: int, decoder_layers: int) -> tuple[set[str], set[str]]:
    """(keys, the unused ones among them) of tests/data/eagle2_keys.txt for these layer counts."""
    keys, unused = set(), set()
    for line in KEYS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        is_unused = line.startswith("unused ")
        pattern = line.removeprefix("unused ")
        if "{V}" in pattern:
            expanded = {pattern.replace("{V}", str(i)) for i in range(vision_layers)}
        elif "{L}" in pattern:
            expanded = {pattern.replace("{L}", str(i)) for i in range(decoder_layers)}
        else:
            expanded = {pattern}
        keys |= expanded
        if is_unused:
            unused |= expanded
    return keys, unused


@pytest.mark.parametrize("variant", ["1b", "2b"])
def test_full_size_keys_match_upstream_module_tree(variant):
    with torch.device("meta"):
        model = build_model(published_config(variant))
        embeds = model.encode_images(torch.empty(2, 3, 448, 448))
    expected, unused = upstream_keys(27, QWEN2_5[variant]["num_hidden_layers"])
    got = set(model.state_dict())
    assert got == expected - unused, (sorted(got - expected)[:5], sorted(expected - unused - got)[:5])
    assert all(is_ignored(FAMILIES["eagle2"], key) for key in unused)
    assert embeds.shape == (2, 256, QWEN2_5[variant]["hidden_size"])
    spec = model.preprocess_spec()
    assert (spec.image_size, spec.tokens_per_tile, spec.min_tiles, spec.max_tiles, spec.use_thumbnail) == \
        (448, 256, 1, 12, True)
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)  # `Eagle2/inference/inference.py`: norm_type 'siglip'
    assert (model.family, model.chat_template) == ("eagle2", "qwen2_chatml")


def test_config_json_keeps_upstream_names(tmp_path):
    save_model(build_model(tiny_eagle2_config(300)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "eagle_chat" and config["architectures"] == ["Eagle2ChatModel"]
    assert {"llm_config", "min_dynamic_patch", "max_dynamic_patch"} <= set(config)
    assert not {"text_config", "min_dynamic_tiles", "max_dynamic_tiles", "use_pixel_shuffle"} & set(config)
    reread = build_model(config).config
    assert (reread.text_config.hidden_size, reread.min_dynamic_tiles, reread.max_dynamic_tiles) == (128, 1, 6)


def test_upstream_defaults():
    """`Eagle2ChatConfig`'s defaults: one tile per image without dynamic_image_size, no thumbnail, 6 tiles."""
    config = tiny_eagle2_config(300)
    for name in ("dynamic_image_size", "use_thumbnail", "max_dynamic_patch"):
        del config[name]
    spec = build_model(config).preprocess_spec()
    assert (spec.max_tiles, spec.use_thumbnail) == (1, False)
    assert build_model({**config, "dynamic_image_size": True}).preprocess_spec().max_tiles == 6


@pytest.mark.parametrize("change, field", [
    (dict(vision_config=dict(model_type="MOB", vision_path="MOB:convnext-1024;palisiglip")),
     "vision_config.model_type 'MOB' (Eagle2-9B's SigLIP + ConvNeXt mixture) is not supported yet"),
    (dict(llm_config=dict(architectures=["LlamaForCausalLM"])), "llm_config.architectures ['LlamaForCausalLM']"),
    (dict(use_llm_lora=128), "use_llm_lora 128"),
    (dict(template=None), "template None"),
])
def test_unsupported_fields_are_refused_by_name(change, field):
    with pytest.raises(CheckpointError) as refused:
        build_model(tiny_eagle2_config(300, **change))
    assert str(refused.value).startswith("config.json: ") and field in str(refused.value)


def test_trtllm_checkpoint_is_qwen2(tmp_path):
    """TensorRT-LLM runs Eagle2's decoder as Qwen2 (export/trtllm.py picks the architecture from the decoder)."""
    from export.trtllm import write_trtllm_checkpoint

    model = build_model(tiny_eagle2_config(300))
    config = json.loads((write_trtllm_checkpoint(model.decoder, tmp_path, "float16") / "config.json").read_text())
    assert (config["architecture"], config["qwen_type"], config["attn_bias"]) == ("Qwen2ForCausalLM", "qwen2", True)
    assert (config["hidden_size"], config["num_hidden_layers"], config["rotary_base"]) == (128, 2, 1e6)
