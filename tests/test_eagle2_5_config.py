"""Eagle2.5's config.json as upstream writes it (NVlabs/Eagle `Eagle2_5/eaglevl/model/eagle2_5/
configuration_eagle2_5_vl.py`): `llm_config` read as `text_config`, the checkpoint's attention choice dropped,
one- and two-layer connectors with or without the pixel shuffle, and a one-line CheckpointError naming the field
for what Aerie does not build."""

from __future__ import annotations

import pytest
import torch

from models.checkpoint import build_model
from models.tiny import tiny_eagle2_5_config
from runtime.errors import CheckpointError


def released(**overrides) -> dict:
    """The tiny config laid out as upstream's training script saves it: the decoder under `llm_config` and
    flash_attention_2 chosen at every level (`Eagle2_5/eaglevl/train/eagle_2_5_vl_finetune.py`)."""
    config = tiny_eagle2_5_config(300)
    config["llm_config"] = {**config.pop("text_config"), "_attn_implementation": "flash_attention_2"}
    config["vision_config"]["_attn_implementation"] = "flash_attention_2"
    return {**config, "_attn_implementation": "flash_attention_2", "_attn_implementation_autoset": False,
            **overrides}


def test_llm_config_and_attention_choice():
    config = released()
    config["llm_config"]["hidden_size"] = 256
    model = build_model(config)
    assert model.config.text_config.hidden_size == 256  # not a default Qwen2 of hidden 4096
    assert model.language_model.config._attn_implementation == "sdpa"
    assert model.vision_model.vision_model.config._attn_implementation == "sdpa"
    assert model.encode_images(torch.zeros(2, 3, 56, 56)).shape == (2, 4, 256)
    # Upstream's setter: llm_config wins over text_config when both are present.
    both = released(text_config={**config["llm_config"], "hidden_size": 384})
    assert build_model(both).config.text_config.hidden_size == 128


@pytest.mark.parametrize("layers, shuffle, keys, tokens, width", [
    (2, True, ["mlp1.0.bias", "mlp1.0.weight", "mlp1.1.bias", "mlp1.1.weight", "mlp1.3.bias", "mlp1.3.weight"], 4, 512),
    (1, True, ["mlp1.0.bias", "mlp1.0.weight"], 4, 512),
    (1, False, ["mlp1.0.bias", "mlp1.0.weight"], 16, 128),
])
def test_connectors(layers, shuffle, keys, tokens, width):
    """`modeling_eagle2_5_vl.py`: LayerNorm+Linear+GELU+Linear on 4x channels, one Linear on 4x channels, or one
    Linear on the tower's channels when the pixel shuffle is off (then every patch is a token)."""
    model = build_model(released(mlp_connector_layers=layers, use_pixel_shuffle=shuffle))
    assert sorted(k for k in model.state_dict() if k.startswith("mlp1.")) == keys
    first_linear = model.mlp1[0] if layers == 1 else model.mlp1[1]
    assert first_linear.in_features == width
    assert model.encode_images(torch.zeros(1, 3, 56, 56)).shape == (1, tokens, 128)
    assert model.preprocess_spec().tokens_per_tile == tokens


def test_fields_read():
    model = build_model(released(template="qwen2-chat", min_dynamic_tiles=2, max_dynamic_tiles=3))
    spec = model.preprocess_spec()
    assert (spec.min_tiles, spec.max_tiles, model.chat_template) == (2, 3, "qwen2_chatml")
    assert build_model(released(dynamic_image_size=False)).preprocess_spec().max_tiles == 1


@pytest.mark.parametrize("change, field", [
    (dict(vision_config=dict(model_type="radio")), "vision_config.model_type 'radio'"),
    (dict(vision_config=dict(model_type="intern_vit_6b")), "vision_config.model_type 'intern_vit_6b'"),
    (dict(llm_config=dict(architectures=["Qwen3ForCausalLM"])), "llm_config.architectures ['Qwen3ForCausalLM']"),
    (dict(llm_config=dict(architectures=["Phi3ForCausalLM"])), "llm_config.architectures ['Phi3ForCausalLM']"),
    (dict(mlp_connector_layers=3), "mlp_connector_layers 3"),
    (dict(mlp_connector_layers=2, use_pixel_shuffle=False), "use_pixel_shuffle false"),
    (dict(template="llama3-chat"), "template 'llama3-chat'"),
])
def test_unsupported_fields_are_refused_by_name(change, field):
    with pytest.raises(CheckpointError) as refused:
        build_model(released(**change))
    message = str(refused.value)
    assert message.startswith("config.json: ") and field in message and "\n" not in message
