"""Eagle-X4 / X5 as a whole: the tower string, the published sizes at full scale (meta device, parameter counts
derived here from each architecture), channel concatenation, checkpoints under the published key names,
and deterministic generation through the PyTorch oracle."""

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from models.checkpoint import build_model, load_model, read_state_dict, save_model
from models.eagle_v1 import X4_TOWER, X5_TOWER, EagleConfig, EagleLlamaForCausalLM
from models.eagle_v1.tower import ChannelConcatTower, parse_tower, resize_fp32
from models.engines import torch_pipeline
from runtime.preprocess import preprocess_image
from models.tiny import tiny_eagle_v1_config
from models.tokenizer_build import save_tokenizer, tokenizer_config, train_tiny_tokenizer
from runtime.errors import CheckpointError
from runtime.sampling import SamplingParams

VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000)
CORPUS = [
    "What colour is the shape? red green blue yellow purple orange black white",
    "How many shapes are there? one two three four five six seven eight nine ten",
    "Which bar is the highest? What is the invoice number? circle square triangle star",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two contend badly on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Parameter counts of the published experts, from their architectures (models.md A1).
def clip_l_336() -> int:
    d, ff, layers, patch, positions = 1024, 4096, 24, 14, (336 // 14) ** 2 + 1
    embeddings = d + 3 * patch * patch * d + positions * d  # class, patch conv (no bias), positions
    layer = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    return embeddings + 2 * d + layers * layer  # + pre_layrnorm; post_layernorm is not built


def convnext_xxl() -> int:
    depths, dims = (3, 4, 30, 3), (384, 768, 1536, 3072)
    total = 3 * 4 * 4 * dims[0] + dims[0] + 2 * dims[0]  # stem conv + LayerNorm2d
    for s, (depth, d) in enumerate(zip(depths, dims)):
        if s:
            prev = dims[s - 1]
            total += 2 * prev + prev * d * 2 * 2 + d  # LayerNorm2d + 2x2 stride-2 conv
        block = d * 7 * 7 + d + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + d  # dw conv, LN, MLP, layer scale
        total += depth * block
    return total


def sam_vit_l() -> int:
    d, layers, mlp, head_dim, out = 1024, 24, 4096, 64, 256
    total = 3 * 16 * 16 * d + d + 64 * 64 * d  # patch conv, absolute positions on the 64x64 grid
    for i in range(layers):
        side = 64 if i in (5, 11, 17, 23) else 14  # relative positions span the global grid or a window
        total += 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * (2 * side - 1) * head_dim
        total += (d * mlp + mlp) + (mlp * d + d)
    return total + d * out + 2 * out  # short neck: conv1 without bias, layer_norm1


def eva02_l_det() -> int:
    d, layers, hidden = 1024, 24, int(1024 * 4 * 2 / 3)
    total = 3 * 16 * 16 * d + d + (14 * 14 + 1) * d  # patch conv, 224-pretraining positions + CLS
    block = 2 * d + 3 * d * d + 2 * d + (d * d + d) + 2 * d  # norm1, q/k/v, q_bias + v_bias, proj, norm2
    block += 2 * (d * hidden + hidden) + 2 * hidden + (hidden * d + d)  # w1, w2, ffn_ln, w3
    return total + layers * block


def pix2struct_l() -> int:
    d, ff, inner, layers, seq_len = 1536, 3968, 24 * 64, 18, 4096
    total = 16 * 16 * 3 * d + d + 2 * seq_len * d  # patch projection, row and column embedders
    layer = 4 * d * inner + 3 * d * ff + 2 * d  # q/k/v/o and wi_0/wi_1/wo without bias, two RMS norms
    return total + layers * layer + d


EXPERT_PARAMS = {"clip": clip_l_336, "convnext": convnext_xxl, "sam": sam_vit_l, "det": eva02_l_det,
                 "pix2struct": pix2struct_l}


def test_parse_tower():
    assert parse_tower(X5_TOWER) == ["clip", "convnext", "sam", "det", "pix2struct"]
    assert parse_tower(X4_TOWER) == ["clip", "convnext", "det", "pix2struct"]
    assert parse_tower("det-1024;clip-448") == ["det", "clip"]
    for bad in ("clip-448,convnext-1024", "clip-336;convnext-1024", "clip-448;clip-448", "openai/clip-vit-large"):
        with pytest.raises(CheckpointError, match="mm_vision_tower"):
            parse_tower(bad)


def published_config(tower: str, mm_hidden: int) -> dict:
    """The fields of an Eagle-X4/X5-7B config.json (models.md A3); none of Aerie's own."""
    return dict(
        architectures=["EagleLlamaForCausalLM"], model_type="eagle_llama", **VICUNA_7B, bos_token_id=1,
        eos_token_id=2, mm_vision_tower=tower, mm_hidden_size=mm_hidden, mm_projector_type="mlp2x_gelu",
        use_mm_proj=True, mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_patch_merge_type="flat",
        image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False,
        tokenizer_model_max_length=2048, tokenizer_padding_side="right", torch_dtype="bfloat16",
    )


@pytest.mark.parametrize("tower, mm_hidden", [(X5_TOWER, 7680), (X4_TOWER, 6656)])
def test_full_size_on_meta(tower, mm_hidden):
    with torch.device("meta"):
        model = build_model(published_config(tower, mm_hidden))
        embeds = model.encode_images(torch.empty(1, 3, 1024, 1024))
    assert isinstance(model, EagleLlamaForCausalLM)
    assert model.model.vision_tower.hidden_size == model.config.mm_hidden_size == mm_hidden
    assert embeds.shape == (1, 1024, 4096)
    experts = model.model.vision_tower.vision_towers
    kinds = parse_tower(tower)
    assert [(e.input_size, e.feature_grid) for e in experts] == [
        {"clip": (336, 24), "convnext": (1024, 32), "sam": (1024, 32), "det": (1024, 64), "pix2struct": (1024, 45)}[k]
        for k in kinds
    ]
    assert [e.hidden_size for e in experts] == [
        {"clip": 1024, "convnext": 3072, "sam": 1024, "det": 1024, "pix2struct": 1536}[k] for k in kinds
    ]
    for kind, expert in zip(kinds, experts):
        assert n_params(expert) == EXPERT_PARAMS[kind](), kind
    assert n_params(model.model.mm_projector) == mm_hidden * 4096 + 4096 + 4096 * 4096 + 4096
    spec = model.preprocess_spec()
    assert (spec.kind, spec.image_size, spec.tokens_per_image) == ("pad_square", 1024, 1024)
    assert spec.pad_color == (122, 116, 104)
    assert model.chat_template == "vicuna_v1"


def test_config_consistency_errors_and_template():
    with pytest.raises(CheckpointError, match="mm_hidden_size 7680.*give 640 channels"):
        build_model(tiny_eagle_v1_config(320, "x4", mm_hidden_size=7680))
    with pytest.raises(CheckpointError, match="'sam'"):
        build_model(tiny_eagle_v1_config(320, "x4", vision_experts=tiny_eagle_v1_config(320, "x5")["vision_experts"]))
    assert EagleConfig(bos_token_id=128000).template_name == "llama3"
    assert EagleConfig(bos_token_id=1).template_name == "vicuna_v1"
    assert EagleConfig(bos_token_id=1, vocab_size=64000).template_name == "yi_34b_chatml_direct"
    assert EagleConfig(conv_mode="llama3").template_name == "llama3"


def test_bfloat16_follows_float32():
    torch.manual_seed(0)
    model = build_model(tiny_eagle_v1_config(320, "x5")).eval()
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        reference = model.encode_images(pixels)
        low = model.to(torch.bfloat16).encode_images(pixels.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(low.float().flatten(), reference.flatten(), dim=0) > 0.99


def test_channels_concatenate_in_tower_order():
    torch.manual_seed(0)
    experts = tiny_eagle_v1_config(320, "x5")["vision_experts"]
    tower = ChannelConcatTower("pix2struct-1024;clip-448;sam-1024;det-1024;convnext-1024", 128, 4, experts).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = tower(x)
        parts = [
            resize_fp32(tower.vision_towers[0](x), 4),  # Pix2Struct 5x5 -> 4x4 (45 -> 32 at full size)
            resize_fp32(tower.vision_towers[1](resize_fp32(x, 42)), 4),  # CLIP reads the image resized, 3x3 -> 4x4
            tower.vision_towers[2](x),  # SAM: already 4x4 after the unshuffle
            resize_fp32(tower.vision_towers[3](x), 4),  # EVA 8x8 -> 4x4
            tower.vision_towers[4](x),  # ConvNeXt: stride 32
        ]
    expected = torch.cat([p.flatten(2).transpose(1, 2) for p in parts], dim=-1)
    assert out.shape == (1, 16, 128 + 128 + 128 + 128 + 256)
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(CORPUS, "llama", vocab_size=320)


@pytest.fixture(scope="module", params=["x5", "x4"])
def tiny_dir(request, tmp_path_factory, tokenizer) -> Path:
    """A tiny X5 or X4 checkpoint with a Vicuna-style tokenizer."""
    directory = tmp_path_factory.mktemp(f"tiny_eagle_{request.param}")
    save_tokenizer(tokenizer, tokenizer_config("llama"), directory)
    torch.manual_seed(0)
    save_model(build_model(tiny_eagle_v1_config(tokenizer.get_vocab_size(), request.param)).eval(), directory)
    return directory


PUBLISHED_KEYS = {
    "clip": "vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight",
    "convnext": "vision_tower.stages.2.blocks.1.mlp.fc2.weight",
    "sam": "vision_tower.layers.0.attn.rel_pos_h",
    "det": "vision_tower.blocks.2.mlp.ffn_ln.weight",
    "pix2struct": "vision_tower.encoder.layer.1.pre_mlp_layer_norm.weight",
}


def test_tiny_checkpoint_has_the_published_keys_and_reloads_exactly(tiny_dir):
    state = read_state_dict(tiny_dir)
    tower = (tiny_dir / "config.json").read_text()
    kinds = parse_tower(X5_TOWER if "sam-1024" in tower else X4_TOWER)
    for i, kind in enumerate(kinds):
        assert f"model.vision_tower.vision_towers.{i}.{PUBLISHED_KEYS[kind]}" in state
    for key in ("model.mm_projector.0.weight", "model.mm_projector.2.bias", "model.embed_tokens.weight",
                "model.layers.1.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"):
        assert key in state
    assert all(re.match(r"(model\.|lm_head\.)", k) for k in state)
    model = load_model(tiny_dir)  # raises on any missing or unexpected key
    assert model.family == "eagle_v1" and type(model).__name__ == "EagleLlamaForCausalLM"
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key]), key


def test_published_only_keys_are_tolerated_and_missing_ones_named(tiny_dir, tmp_path):
    state = read_state_dict(tiny_dir)
    kinds = parse_tower(X5_TOWER if "sam-1024" in (tiny_dir / "config.json").read_text() else X4_TOWER)
    prefix = "model.vision_tower.vision_towers.{}.vision_tower."
    clip, convnext, det = (prefix.format(kinds.index(k)) for k in ("clip", "convnext", "det"))
    extra = {
        det + "rope_win.freqs_cos": torch.zeros(16, 32),
        det + "rope_glb.freqs_sin": torch.zeros(64, 32),
        det + "blocks.0.attn.rope.freqs_cos": torch.zeros(16, 32),
        convnext + "head.fc.weight": torch.zeros(10, 256),
        convnext + "head.norm.bias": torch.zeros(256),
        clip + "vision_model.post_layernorm.weight": torch.ones(128),
    }
    (tmp_path / "config.json").write_bytes((tiny_dir / "config.json").read_bytes())
    save_file({**state, **extra}, str(tmp_path / "model.safetensors"))
    load_model(tmp_path)
    missing = det + "blocks.1.attn.q_bias"
    save_file({k: v for k, v in state.items() if k != missing}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(missing)):
        load_model(tmp_path)


def test_tiny_model_generates_deterministically(tiny_dir):
    pipe = torch_pipeline(tiny_dir)
    assert pipe.template.name == "vicuna_v1" and pipe.spec.kind == "pad_square"
    image = Image.new("RGB", (90, 50), (200, 10, 10))
    first = pipe.run("What colour is the shape?", [image], SamplingParams(max_new_tokens=6))
    second = pipe.run("What colour is the shape?", [image], SamplingParams(max_new_tokens=6))
    assert first.token_ids == second.token_ids and len(first.token_ids) <= 6
    image_ids = first.prompt_ids[first.prompt_ids >= pipe.first_image_id]
    assert len(image_ids) == 16 == preprocess_image(image, pipe.spec).num_tokens
