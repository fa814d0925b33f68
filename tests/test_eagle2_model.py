"""Eagle2 (config.json `model_type: eagle_chat`): the full-size 1B, 2B and 9B module trees on the meta device carry
exactly the keys upstream's module tree produces (tests/data/eagle2_keys.txt, eagle2_9b_keys.txt), 9B's SigLIP +
ConvNeXt features are joined as upstream's code joins them, config.json is read and written under upstream's field
names, and what Aerie does not build (LoRA-wrapped weights, other towers) is refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import build_model, save_model
from models.registry import FAMILIES, is_ignored
from models.tiny import tiny_eagle2_9b_config, tiny_eagle2_config
from runtime.errors import CheckpointError

DATA = Path(__file__).parent / "data"

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


def upstream_keys(name: str, expansions: dict[str, list[str]]) -> tuple[set[str], set[str]]:
    """(keys, the unused ones among them) of a tests/data key list, each `{X}` replaced by each of its expansions."""
    keys, unused = set(), set()
    for line in (DATA / name).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        expanded = {line.removeprefix("unused ")}
        for mark, values in expansions.items():
            expanded = {key.replace(mark, value) for key in expanded for value in values} if any(
                mark in key for key in expanded) else expanded
        keys |= expanded
        if line.startswith("unused "):
            unused |= expanded
    return keys, unused


def layers(n: int) -> list[str]:
    return [str(i) for i in range(n)]


@pytest.mark.parametrize("variant", ["1b", "2b"])
def test_full_size_keys_match_upstream_module_tree(variant):
    with torch.device("meta"):
        model = build_model(published_config(variant))
        embeds = model.encode_images(torch.empty(2, 3, 448, 448))
    expected, unused = upstream_keys("eagle2_keys.txt", {"{V}": layers(27),
                                                         "{L}": layers(QWEN2_5[variant]["num_hidden_layers"])})
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
    (dict(vision_config=dict(model_type="MOB", vision_path="MOB:convnext-1024;pix2struct")),
     "vision_config.vision_path 'MOB:convnext-1024;pix2struct'"),
    (dict(vision_config=dict(model_type="MOB", vision_path="MOB:convnext-1024;palisiglip",
                             moe_version_type="seq_concat", siglip_vision_config={})),
     "vision_config.moe_version_type 'seq_concat'"),
    (dict(vision_config=dict(model_type="MOB", vision_path="MOB:convnext-1024;palisiglip")),
     "vision_config.siglip_vision_config is missing"),
    (dict(vision_config=dict(model_type="radio")), "vision_config.model_type 'radio'"),
    (dict(select_layer=-2, vision_config=tiny_eagle2_9b_config(0)["vision_config"]), "select_layer -2 with the MOB"),
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


# Eagle2-9B: SigLIP-so400m and ConvNeXt-XXLarge, Qwen2.5-7B-Instruct (models.md A6); the MOB fields are upstream's
# config class defaults (grid 32, ConvNeXt at 1024, moe_version_type null), the tower order either way round.
QWEN2_5_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, tie_word_embeddings=False)
NINE_B_PATHS = ["MOB:convnext-1024;palisiglip", "MOB:palisiglip;convnext-1024"]


def published_9b_config(vision_path: str, moe_version_type: str | None = None) -> dict:
    config = published_config("1b")
    config["llm_config"] = {**config["llm_config"], **QWEN2_5_7B}
    config["vision_config"] = dict(
        model_type="MOB", vision_path=vision_path, mm_vision_select_layer=-2, grid_size=32, input_image_size=1024,
        hidden_size="lazy_calculation", image_size=1024, moe_version_type=moe_version_type, convnext_img_size=1024,
        normalize_type="siglip", vision_tower_convnext_path="convnext_xxlarge.clip_laion2b_soup",
        siglip_vision_config={k: v for k, v in SIGLIP.items() if k != "model_type"})
    return config


@pytest.mark.parametrize("vision_path", NINE_B_PATHS)
def test_full_size_9b_keys_match_upstream_module_tree(vision_path):
    with torch.device("meta"):
        model = build_model(published_9b_config(vision_path))
        embeds = model.encode_images(torch.empty(1, 3, 448, 448))
    names = vision_path.removeprefix("MOB:").split(";")
    blocks = [f"{stage}.blocks.{b}" for stage, depth in enumerate((3, 4, 30, 3)) for b in range(depth)]
    expected, unused = upstream_keys("eagle2_9b_keys.txt", {
        "{S}": [str(names.index("palisiglip"))], "{C}": [str(names.index("convnext-1024"))], "{V}": layers(27),
        "{L}": layers(28), "{D}": ["1", "2", "3"], "{B}": blocks})
    got = set(model.state_dict())
    assert got == expected - unused, (sorted(got - expected)[:5], sorted(expected - unused - got)[:5])
    assert all(is_ignored(FAMILIES["eagle2"], key) for key in unused)
    assert model.mlp1[0].normalized_shape == ((1152 + 3072) * 4,)
    assert embeds.shape == (1, 256, 3584) and model.preprocess_spec().tokens_per_tile == 256


def upstream_mixture_features(model, x: torch.Tensor) -> torch.Tensor:
    """The HF release's `MultiBackboneChannelConcatenationVisionTower.forward` and `Eagle2ChatModel.extract_feature`
    (before `mlp1`) restated with the model's own towers: each tower reads the tile resized (bilinear,
    align_corners) to its size, ConvNeXt after `slip_to_clip`; null/all_tiling brings every feature map to the grid,
    concatenates channels in tower order and pixel-shuffles; convnext_512_siglip_448 shuffles SigLIP's tokens and
    appends ConvNeXt's."""
    mixture = model.config.mixture
    towers = dict(zip(mixture.towers, model.vision_model.vision_model.vision_towers))
    mean_s, std_s = torch.tensor([0.5] * 3), torch.tensor([0.5] * 3)
    mean_c = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std_c = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    a, b = (std_s / std_c).view(-1, 1, 1), ((mean_s - mean_c) / std_c).view(-1, 1, 1)

    def resized(size: int) -> torch.Tensor:
        return x if size == x.shape[2] else F.interpolate(x.float(), size=(size, size), mode="bilinear",
                                                          align_corners=True)

    def convnext() -> torch.Tensor:
        y = towers["convnext-1024"].vision_tower.stem(resized(mixture.convnext_img_size) * a + b)
        y = towers["convnext-1024"].vision_tower.stages(y)
        return y.view(y.shape[0], y.shape[1], -1).transpose(1, 2)

    def siglip() -> torch.Tensor:
        siglip_model = towers["palisiglip"].vision_tower.vision_model
        return siglip_model(pixel_values=resized(mixture.siglip_img_size)).last_hidden_state

    def shuffle(v: torch.Tensor) -> torch.Tensor:
        n, hw, c = v.shape
        h = w = int(hw**0.5)
        v = v.reshape(n, h, w, c).view(n, w, int(h * 0.5), int(c / 0.5)).permute(0, 2, 1, 3).contiguous()
        v = v.view(n, int(h * 0.5), int(w * 0.5), int(c / 0.25)).permute(0, 2, 1, 3).contiguous()
        return v.reshape(n, -1, v.shape[-1])

    if mixture.moe_version_type == "convnext_512_siglip_448":
        return torch.cat([shuffle(siglip()), convnext()], dim=-1)
    grid, features = mixture.grid_size, []
    for name in mixture.towers:
        feature = siglip() if name == "palisiglip" else convnext()
        n, hw, c = feature.shape
        if hw != grid * grid:
            side = int(hw**0.5)
            feature = F.interpolate(feature.transpose(1, 2).reshape(n, c, side, side).float(), size=(grid, grid),
                                    mode="bilinear", align_corners=True).flatten(2).transpose(1, 2)
        features.append(feature)
    return shuffle(torch.cat(features, dim=-1))


@pytest.mark.parametrize("vision_path", NINE_B_PATHS)
@pytest.mark.parametrize("moe, convnext_img_size", [
    (None, 128),  # ConvNeXt's 4x4 map is the grid already
    (None, 64),  # its 2x2 map is resized up to the grid
    ("convnext_512_siglip_448", 64),  # its 2x2 tokens go after the shuffled SigLIP ones
])
def test_9b_features_are_joined_as_upstream_joins_them(vision_path, moe, convnext_img_size):
    torch.manual_seed(0)
    config = tiny_eagle2_9b_config(300, moe_version_type=moe, vision_path=vision_path)
    config["vision_config"]["convnext_img_size"] = convnext_img_size
    model = build_model(config).eval()
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), upstream_mixture_features(model, x), rtol=0, atol=1e-5)
