"""Each Eagle v1 vision expert on its tiny configuration: grid, channels, key names and the behaviour the
published weights expect (CLS drop, short SAM neck, EVA window/global split and RoPE, Pix2Struct processing)."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel
from transformers.models.pix2struct.image_processing_pil_pix2struct import Pix2StructImageProcessorPil

from models.eagle_v1.clip import ClipExpert, clip_config
from models.eagle_v1.convnext import ConvNeXtExpert
from models.eagle_v1.eva_det import Block, EvaDetConfig, EvaDetExpert, RotaryEmbedding, rope_tables
from models.eagle_v1.pix2struct import Pix2StructExpert, antialias_matrix, patch_grid
from models.eagle_v1.sam import SamExpert
from models.eagle_v1.tower import resize_fp32
from models.tiny import tiny_eagle_v1_config
from runtime.errors import CheckpointError
from runtime.preprocess import CLIP_MEAN, CLIP_STD

TINY = tiny_eagle_v1_config(320)["vision_experts"]
SIZE = 128  # the tiny mixture's image side


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two contend badly on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clip_normalised(images_255: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images_255 / 255 - mean) / std


# ---------------------------------------------------------------------------------------------- CLIP


def test_clip_drops_cls_before_the_encoder_and_skips_post_layernorm():
    torch.manual_seed(0)
    expert = ClipExpert(TINY["clip"]).eval()
    assert (expert.input_size, expert.feature_grid, expert.hidden_size) == (42, 3, 128)
    assert not any("post_layernorm" in k for k in expert.state_dict())
    x = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        out = expert(x)
        assert out.shape == (2, 128, 3, 3)

        # transformers' CLIPVisionModel with the same weights, run the way HRCLIPVisionTower runs it.
        hf = CLIPVisionModel(clip_config(TINY["clip"])).eval()
        missing, unexpected = hf.load_state_dict(expert.vision_tower.vision_model.state_dict(), strict=False)
        assert sorted(missing) == ["post_layernorm.bias", "post_layernorm.weight"] and not unexpected
        tokens = hf.pre_layrnorm(hf.embeddings(x)[:, 1:])
        for layer in hf.encoder.layers:  # every layer: mm_vision_select_layer is ignored
            tokens = layer(tokens, None)
        expected = tokens.transpose(1, 2).reshape(2, 128, 3, 3)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

        # Not what plain CLIP gives (CLS attended, post_layernorm, or layer -2).
        standard = hf(x, output_hidden_states=True)
        for other in (standard.last_hidden_state[:, 1:], standard.hidden_states[-2][:, 1:]):
            assert not torch.allclose(other.transpose(1, 2).reshape(2, 128, 3, 3), out, atol=1e-3)

        # The CLS embedding never reaches the encoder.
        expert.vision_tower.vision_model.embeddings.class_embedding.add_(3.0)
        assert torch.equal(expert(x), out)


# ---------------------------------------------------------------------------------------------- ConvNeXt

TIMM_CONVNEXT_KEY = (
    r"stem\.[01]\.(weight|bias)"
    r"|stages\.[1-9]\.downsample\.[01]\.(weight|bias)"
    r"|stages\.\d\.blocks\.\d+\.(conv_dw\.(weight|bias)|norm\.(weight|bias)|mlp\.fc[12]\.(weight|bias)|weight)"
)


def test_convnext_timm_tree_and_stride_32():
    torch.manual_seed(0)
    expert = ConvNeXtExpert(SIZE, TINY["convnext"]).eval()
    keys = list(expert.vision_tower.state_dict())
    assert [k for k in keys if not re.fullmatch(TIMM_CONVNEXT_KEY, k)] == []
    assert not any(k.startswith("stages.0.downsample") for k in keys)  # stage 0 keeps the stem's stride
    assert expert.vision_tower.stages[3].blocks[0].weight.shape == (256,)  # layer scale, named `weight`

    sides = []
    for stage in expert.vision_tower.stages:
        stage.register_forward_hook(lambda mod, inp, out: sides.append((out.shape[1], out.shape[2])))
    with torch.no_grad():
        out = expert(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, 256, 4, 4)
    assert sides == [(128, 32), (128, 16), (128, 8), (256, 4)]  # stem /4, then /8, /16, /32
    assert (expert.feature_grid, expert.hidden_size) == (4, 256)


def test_convnext_block_is_a_layer_scaled_residual():
    torch.manual_seed(0)
    block = ConvNeXtExpert(SIZE, TINY["convnext"]).vision_tower.stages[1].blocks[0].eval()
    x = torch.randn(1, 128, 8, 8)
    with torch.no_grad():
        block.weight.zero_()
        assert torch.equal(block(x), x)
        block.weight.fill_(1.0)
        y = F.conv2d(x, block.conv_dw.weight, block.conv_dw.bias, padding=3, groups=128).permute(0, 2, 3, 1)
        y = F.layer_norm(y, (128,), block.norm.weight, block.norm.bias, eps=1e-5)
        y = F.gelu(F.linear(y, block.mlp.fc1.weight, block.mlp.fc1.bias))
        y = F.linear(y, block.mlp.fc2.weight, block.mlp.fc2.bias)
        torch.testing.assert_close(block(x), x + y.permute(0, 3, 1, 2))


def test_convnext_rejects_an_image_off_its_stride():
    with pytest.raises(CheckpointError, match="stride 32"):
        ConvNeXtExpert(100, TINY["convnext"])


# ---------------------------------------------------------------------------------------------- SAM


def test_sam_short_neck_and_pixel_unshuffle_order():
    torch.manual_seed(0)
    expert = SamExpert(SIZE, TINY["sam"]).eval()
    assert sorted(k for k in expert.state_dict() if ".neck." in f".{k}") == [
        "vision_tower.neck.conv1.weight", "vision_tower.neck.layer_norm1.bias", "vision_tower.neck.layer_norm1.weight"
    ]
    assert expert.vision_tower.neck.conv1.bias is None
    assert [layer.window_size for layer in expert.vision_tower.layers] == [3, 0]  # 3x3 windows on 8x8: padded

    captured = {}
    expert.vision_tower.neck.register_forward_hook(lambda mod, inp, out: captured.setdefault("neck", out))
    x = clip_normalised(torch.rand(2, 3, SIZE, SIZE) * 255)
    with torch.no_grad():
        out = expert(x)
        # transformers' own encoder loop, ending in the replaced neck, agrees with the expert's.
        torch.testing.assert_close(expert.vision_tower(x).last_hidden_state, captured["neck"])
    neck = captured["neck"]
    assert neck.shape == (2, 32, 8, 8) and out.shape == (2, 128, 4, 4)
    assert (expert.hidden_size, expert.feature_grid) == (128, 4)
    # channels-first LayerNorm (weight 1, bias 0 at init): every pixel normalised over its channels
    torch.testing.assert_close(neck.mean(1), torch.zeros(2, 8, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(neck.var(1, unbiased=False), torch.ones(2, 8, 8), atol=1e-3, rtol=0)
    for c, dy, dx in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (5, 1, 1), (31, 0, 1)]:
        torch.testing.assert_close(out[:, c * 4 + dy * 2 + dx], neck[:, c, dy::2, dx::2], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- EVA-02 det


def test_eva_windows_and_shapes():
    torch.manual_seed(0)
    expert = EvaDetExpert(SIZE, TINY["det"]).eval()
    vit = expert.vision_tower
    assert [b.window_size for b in vit.blocks] == [4, 4, 0]
    assert vit.rope_win.freqs_cos.shape == (16, 32) and vit.rope_glb.freqs_cos.shape == (64, 32)
    assert vit.pos_embed.shape == (1, 6 * 6 + 1, 128)  # pretraining grid 96 / 16 plus CLS
    assert not any("rope" in k for k in expert.state_dict())  # recomputed, never saved
    keys = set(expert.state_dict())
    for name in ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.q_bias", "attn.v_bias",
                 "attn.proj.bias", "mlp.w1.bias", "mlp.w2.bias", "mlp.ffn_ln.weight", "mlp.w3.bias", "norm1.weight"):
        assert f"vision_tower.blocks.0.{name}" in keys
    assert vit.blocks[0].attn.q_proj.bias is None and vit.blocks[0].attn.k_proj.bias is None
    assert vit.blocks[0].mlp.ffn_ln.normalized_shape == (384,)  # the SwiGLU's sub-LN on the hidden layer
    with torch.no_grad():
        out = expert(torch.randn(2, 3, SIZE, SIZE))
        # At the pretraining size the absolute position embedding is the table itself, without its CLS entry.
        torch.testing.assert_close(vit.abs_pos(6, 6)[0], vit.pos_embed[0, 1:].reshape(6, 6, 128))
    assert out.shape == (2, 128, 8, 8) and (expert.feature_grid, expert.hidden_size) == (8, 128)


@pytest.mark.parametrize("window", [4, 0, 3])
def test_eva_block_attends_within_its_window_or_globally(window):
    torch.manual_seed(0)
    expert = EvaDetExpert(SIZE, TINY["det"]).eval()
    config = EvaDetConfig(embed_dim=128, num_heads=4, mlp_ratio=3.0, window_size=window or 4)
    block = Block(config, window).eval()
    block.load_state_dict(expert.vision_tower.blocks[0].state_dict())
    rope = expert.vision_tower.rope_glb if window == 0 else RotaryEmbedding(32, window, 16)
    x = torch.randn(1, 8, 8, 128)
    bumped = x.clone()
    bumped[0, 0, 0] += torch.randn(128)  # not a constant shift, which norm1 would remove
    with torch.no_grad():
        changed = (block(bumped, rope) - block(x, rope)).abs().amax(-1)[0] > 1e-6
    if window == 0:
        assert changed.all()
    else:  # only the window holding (0, 0) sees the change (3x3 windows: the map is padded to 9x9)
        expected = torch.zeros(8, 8, dtype=torch.bool)
        expected[:window, :window] = True
        assert torch.equal(changed, expected)


def test_eva_rope_tables_match_the_2d_interleaved_layout():
    head_dim, side, pt = 16, 4, 16
    cos, sin = rope_tables(head_dim, side, pt)
    half = head_dim // 2
    freqs = [10000 ** (-2 * k / half) for k in range(half // 2)]
    for i in range(side):
        for j in range(side):
            for ch in range(head_dim):
                axis, c = (i, ch) if ch < half else (j, ch - half)
                angle = axis * pt / side * freqs[c // 2]
                assert cos[i * side + j, ch].item() == pytest.approx(np.cos(angle), abs=1e-5)
                assert sin[i * side + j, ch].item() == pytest.approx(np.sin(angle), abs=1e-5)


def test_eva_rope_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    rope = RotaryEmbedding(32, 4, 16)
    q, k = torch.randn(32), torch.randn(32)
    rq, rk = rope(q.expand(16, 32)), rope(k.expand(16, 32))
    score = lambda a, b: (rq[a[0] * 4 + a[1]] @ rk[b[0] * 4 + b[1]]).item()  # noqa: E731
    assert score((1, 2), (0, 1)) == pytest.approx(score((3, 3), (2, 2)), abs=1e-4)
    assert score((0, 0), (0, 0)) == pytest.approx(score((2, 3), (2, 3)), abs=1e-4)
    assert score((1, 2), (0, 1)) != pytest.approx(score((1, 2), (1, 0)), abs=1e-3)


# ---------------------------------------------------------------------------------------------- Pix2Struct


def test_pix2struct_patch_grid_as_the_processor():
    assert patch_grid(1024, 1024, 2048, 16) == (45, 45)  # 720 pixels, 2025 real patches
    assert patch_grid(SIZE, SIZE, 32, 16) == (5, 5)
    assert patch_grid(300, 1000, 2048, 16) == (24, 82)


@pytest.mark.parametrize("sizes", [(1024, 720), (128, 80), (37, 50)])
def test_antialias_matrix_reproduces_torch_interpolate(sizes):
    n_in, n_out = sizes
    a = antialias_matrix(n_in, n_out)
    image = torch.randn(1, 2, n_in, n_in)
    expected = F.interpolate(image, size=(n_out, n_out), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(a @ image @ a.T, expected, rtol=1e-5, atol=1e-5)


def test_pix2struct_reprocessing_and_encoder_match_transformers():
    torch.manual_seed(0)
    expert = Pix2StructExpert(SIZE, TINY["pix2struct"]).eval()
    assert (expert.rows, expert.cols, expert.feature_grid, expert.hidden_size) == (5, 5, 5, 128)
    pixels = clip_normalised(torch.rand(2, 3, SIZE, SIZE) * 255)
    pixels[1] = pixels[1] * 0.3  # a low-contrast image: a different standardisation
    # The reference: undo CLIP normalisation, x255, the processor (transformers' numpy path = 4.x's).
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    processed = Pix2StructImageProcessorPil(is_vqa=False, max_patches=32)(
        images=((pixels * std + mean) * 255.0).float(), return_tensors="pt"
    )
    flat, mask = processed["flattened_patches"], processed["attention_mask"]
    assert flat.shape == (2, 32, 770) and mask.sum(-1).tolist() == [25.0, 25.0]
    with torch.no_grad():
        torch.testing.assert_close(expert.reprocess(pixels), flat[:, :25], rtol=1e-5, atol=1e-5)
        reference = expert.vision_tower(flattened_patches=flat, attention_mask=mask).last_hidden_state[:, :25]
        out = expert(pixels)
    assert out.shape == (2, 128, 5, 5)
    torch.testing.assert_close(out, reference.transpose(1, 2).reshape(2, 128, 5, 5), rtol=1e-4, atol=1e-4)


def test_pix2struct_full_size_reprocessing_gives_45x45_patches_as_the_processor():
    with torch.device("meta"):  # the encoder stays on meta; the re-processing constants are real
        expert = Pix2StructExpert(1024)
    assert (expert.rows, expert.cols, expert.hidden_size) == (45, 45, 1536)
    assert expert.resize_rows.shape == (720, 1024)
    torch.manual_seed(0)
    pixels = clip_normalised(torch.rand(1, 3, 1024, 1024) * 255)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    images = ((pixels * std + mean) * 255.0).float()
    processed = Pix2StructImageProcessorPil(is_vqa=False)(images=images, return_tensors="pt")  # max_patches 2048
    flat = processed["flattened_patches"]
    assert flat.shape == (1, 2048, 770) and processed["attention_mask"].sum().item() == 2025
    torch.testing.assert_close(expert.reprocess(pixels), flat[:, :2025], rtol=1e-4, atol=1e-4)


def test_resize_to_grid_is_align_corners_in_fp32():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 5, 5, dtype=torch.bfloat16)
    y = resize_fp32(x, 4)
    assert y.dtype == torch.bfloat16 and y.shape == (1, 4, 4, 4)
    assert torch.equal(y[..., 0, 0], x[..., 0, 0]) and torch.equal(y[..., -1, -1], x[..., -1, -1])  # corners kept
    expected = F.interpolate(x.float(), size=(4, 4), mode="bilinear", align_corners=True).to(torch.bfloat16)
    assert torch.equal(y, expected)
