"""EVE v1 (BAAI/EVE-7B-v1.0, EVE-7B-HD-v1.0): an encoder-free VLM.

A patch-embedding layer (conv 14 without bias, local attention over 2x2 windows, a global CLS query,
a split token after every row) and an mlp2x_gelu projector feed a Vicuna (Llama) decoder directly.
The patch-aligning layer and its frozen CLIP teacher exist for training only. Faithful to
`EVEv1/eve/model/multimodal_encoder/vision_tokenizer.py` and `eve_arch.py`; key names
`model.vision_tower.*`, `model.mm_projector.*`, `model.layers.*`, `lm_head.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from runtime.errors import CheckpointError
from runtime.preprocess import CLIP_MEAN, CLIP_STD, PreprocessSpec

from .projector import build_projector
from .vlm import VisionLanguageModel


class EVEConfig(LlamaConfig):
    """LlamaConfig plus EVE's multimodal fields (model_type "eve").

    `image_size`, `patch_stride`, `conv_stride` and `image_size_clip` live in the published model's
    preprocessor directory (`mm_vision_tower`); Aerie also writes them here so a checkpoint is
    self-contained, and falls back to the published values (672 or 1344 by the tower name).
    """

    model_type = "eve"

    def __init__(
        self,
        mm_vision_tower: str = "openai/eve-patch14-anypixel-672",
        mm_vision_tower_clip: str = "openai/clip-vit-large-patch14-336",
        requires_cliploss: bool = True,
        mm_hidden_size: int = 1024,
        mm_projector_type: str = "mlp2x_gelu",
        use_mm_proj: bool = True,
        mm_vision_select_layer: int = -2,
        mm_vision_select_feature: str = "patch",
        mm_use_im_start_end: bool = False,
        mm_use_im_patch_token: bool = False,
        image_aspect_ratio: str = "square",
        image_size: int | None = None,
        image_size_clip: int = 336,
        patch_stride: int = 14,
        conv_stride: int = 2,
        pel_num_heads: int = 8,
        pal_layer_rate: int = 4,
        pal_num_heads: int = 8,
        clip_vision_config: dict | None = None,
        **kwargs,
    ):
        self.mm_vision_tower = mm_vision_tower
        self.mm_vision_tower_clip = mm_vision_tower_clip
        self.requires_cliploss = requires_cliploss
        self.mm_hidden_size = mm_hidden_size
        self.mm_projector_type = mm_projector_type
        self.use_mm_proj = use_mm_proj
        self.mm_vision_select_layer = mm_vision_select_layer
        self.mm_vision_select_feature = mm_vision_select_feature
        self.mm_use_im_start_end = mm_use_im_start_end
        self.mm_use_im_patch_token = mm_use_im_patch_token
        self.image_aspect_ratio = image_aspect_ratio
        self.image_size = image_size or (1344 if "1344" in (mm_vision_tower or "") else 672)
        self.image_size_clip = image_size_clip
        self.patch_stride = patch_stride
        self.conv_stride = conv_stride
        self.pel_num_heads = pel_num_heads
        self.pal_layer_rate = pal_layer_rate
        self.pal_num_heads = pal_num_heads
        self.clip_vision_config = clip_vision_config
        super().__init__(**kwargs)


class LocalAttention(nn.Module):
    """Each 2x2 window of patches is attended by its average (EVE's quirk: scale = dim^-0.5, not head_dim)."""

    def __init__(self, dim: int, conv_stride: int, num_heads: int = 8):
        super().__init__()
        self.conv_stride = conv_stride
        self.num_heads = num_heads
        self.scale = dim**-0.5
        self.q = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim, bias=False))
        self.kv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * 2, bias=False))
        self.proj = nn.Linear(dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] patches -> [B, (H/s)*(W/s), C] window tokens."""
        s = self.conv_stride
        b, c, height, width = features.shape
        h, w = height // s, width // s
        pooled = F.avg_pool2d(features, kernel_size=s, stride=s).flatten(2).transpose(1, 2)  # [B, hw, C]
        q = self.q(pooled).reshape(b, h * w, self.num_heads, -1).permute(0, 2, 1, 3).unsqueeze(-2)
        # The reference uses unfold; a reshape gives the same windows and exports to ONNX with dynamic H, W.
        windows = features.reshape(b, c, h, s, w, s).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, s * s, c)
        kv = self.kv(windows).reshape(b, h * w, s * s, 2, self.num_heads, -1).permute(3, 0, 4, 1, 2, 5)
        attn = ((q * self.scale) * kv[0]).sum(-1).softmax(dim=-1)
        out = (attn.unsqueeze(-1) * kv[1]).sum(-2).transpose(1, 2).reshape(b, h * w, -1)
        return pooled + self.proj(out)


class GlobalAttention(nn.Module):
    """The learnable CLS embedding attends over all window tokens."""

    def __init__(self, dim: int, num_heads: int = 8):
        super().__init__()
        self.num_heads = num_heads
        self.scale = dim**-0.5
        self.q = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim, bias=False))
        self.kv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * 2, bias=False))
        self.proj = nn.Linear(dim, dim)

    def forward(self, class_feature: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """class_feature [1, 1, C], features [B, N, C] -> [B, 1, C]."""
        b, n, _ = features.shape
        class_feature = class_feature.expand(b, 1, -1)
        q = self.q(class_feature).reshape(b, 1, self.num_heads, -1).transpose(1, 2)
        kv = self.kv(features).reshape(b, n, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) * kv[0]).sum(-1).softmax(dim=-1)
        out = (attn.unsqueeze(-1) * kv[1]).sum(-2).reshape(b, 1, -1)
        return class_feature + self.proj(out)


def valid_span(valid: torch.Tensor) -> tuple[int, int]:
    """(first, last + 1) of the True entries of a 1-D mask, with the bounds torch.export needs to slice by them."""
    n = valid.shape[0]
    index = torch.arange(n, device=valid.device)
    first = torch.where(valid, index, n).min().item()  # .item(), not int(): traceable as an unbacked size
    end = torch.where(valid, index, -1).max().item() + 1
    torch._check(first >= 0)
    torch._check(first < end)
    torch._check(end <= n)
    return first, end


class VisionTokenizer(nn.Module):
    """EVE's patch-embedding layer (PEL): pixels + validity mask -> [CLS] row_1 [SPL] ... row_h [SPL]."""

    def __init__(self, dim: int, patch_stride: int, conv_stride: int, num_heads: int = 8):
        super().__init__()
        self.patch_stride, self.conv_stride = patch_stride, conv_stride
        self.patch_embedding = nn.Conv2d(3, dim, kernel_size=patch_stride, stride=patch_stride, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(dim))
        self.split_embedding = nn.Parameter(torch.randn(dim))
        self.local_attention = LocalAttention(dim, conv_stride, num_heads)
        self.global_attention = GlobalAttention(dim, num_heads)

    def crop_to_valid(self, patch_embeds: torch.Tensor, pixel_masks: torch.Tensor) -> torch.Tensor:
        """Keep the box from the first to the last patch row and column the mask marks valid (the reference's
        nonzero box), found with min/max and cut with a slice: no NonZero op, which TensorRT can't parse."""
        patch_masks = F.avg_pool2d(pixel_masks, kernel_size=self.patch_stride, stride=self.patch_stride)[0, 0]
        top, bottom = valid_span(patch_masks.amax(dim=1) > 0)
        left, right = valid_span(patch_masks.amax(dim=0) > 0)
        return patch_embeds[:, :, top:bottom, left:right]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One image [1, 4, H, W] (RGB + mask) -> [1 + h*(w+1), C] tokens before the projector."""
        pixels, masks = pixel_values[:, :-1], pixel_values[:, -1:]
        # The dtype of the layer's own weight: computing in float32 from stored float16 casts a block's weights
        # as its forward starts (models/precision.py), and a child's are cast only when the child runs.
        patch_embeds = self.patch_embedding(pixels.to(self.class_embedding.dtype))
        patch_embeds = self.crop_to_valid(patch_embeds, masks)
        h, w = patch_embeds.shape[2] // self.conv_stride, patch_embeds.shape[3] // self.conv_stride
        tokens = self.local_attention(patch_embeds)  # [1, h*w, C]
        cls = self.global_attention(self.class_embedding[None, None, :], tokens)[0]  # [1, C]
        grid = tokens[0].reshape(h, w, -1)
        split = self.split_embedding[None, None, :].expand(h, 1, -1)
        rows = torch.cat([grid, split], dim=1).reshape(h * (w + 1), -1)
        return torch.cat([cls, rows], dim=0)


class CLIPTeacher(nn.Module):
    """The frozen CLIP-L/14-336 teacher of the patch-aligning loss: patch tokens of layer -2.

    Keys `model.vision_clip.backbone.vision_model.*`, as the published training checkpoints have them.
    """

    def __init__(self, config: CLIPVisionConfig, select_layer: int = -2):
        super().__init__()
        self.select_layer = select_layer
        self.backbone = nn.Module()
        self.backbone.vision_model = CLIPVisionModel(config)
        self.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.backbone.vision_model(pixel_values[:, :3], output_hidden_states=True)
        return out.hidden_states[self.select_layer][:, 1:]


class VisionCompressor(nn.Module):
    """EVE's patch-aligning layer (PAL): LLM hidden states at the image rows -> CLIP-sized features.

    Layers `num_layers - arange(0, num_layers + 1, layer_rate)` of the LLM (every 4th, from the last)
    are normalised, projected to the CLIP width and fused by a cross-attention whose query is the last.
    """

    def __init__(self, llm_size: int, clip_size: int, num_layers: int, patch_ratio: int, layer_rate: int = 4, num_heads: int = 8):
        super().__init__()
        self.register_buffer("layer_idx", num_layers - torch.arange(0, num_layers + 1, layer_rate), persistent=False)
        if len(self.layer_idx) < 2:
            raise CheckpointError(f"config.json: the patch aligner needs at least 2 LLM layers to fuse; lower "
                                  f"pal_layer_rate below {layer_rate}")
        self.norm_layer = nn.ModuleList(
            [nn.Sequential(nn.LayerNorm(llm_size), nn.Linear(llm_size, clip_size, bias=False)) for _ in self.layer_idx]
        )
        self.input_layer = nn.Linear(llm_size, clip_size)
        self.output_layer = nn.Linear(clip_size, clip_size)
        self.num_heads = num_heads
        self.scale = clip_size**-0.5
        self.patch_ratio = patch_ratio

    def cross_attention(self, vision_input: torch.Tensor, vision_outputs: torch.Tensor) -> torch.Tensor:
        n, layers, _ = vision_outputs.shape
        q = vision_outputs[:, :1].reshape(n, 1, self.num_heads, -1).transpose(1, 2)
        kv = vision_outputs[:, 1:].reshape(n, layers - 1, self.num_heads, -1).transpose(1, 2)
        attn = ((q * self.scale) * kv).sum(-1).softmax(dim=-1)
        fused = (attn.unsqueeze(-1) * kv).sum(-2)
        return vision_input + self.output_layer(fused.reshape(n, -1))

    def forward(self, image_states: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """image_states [1 + h*(w+1), layers+1, D] of one image -> [h'*w', clip] aligned features."""
        w, h = grid
        layers, dim = image_states.shape[1], image_states.shape[2]
        x = image_states[1:].permute(1, 2, 0).reshape(layers, dim, h, w + 1)[..., :-1]
        if self.patch_ratio > 1:
            x = F.avg_pool2d(x, kernel_size=self.patch_ratio, stride=self.patch_ratio)
        x = x.flatten(2).permute(2, 0, 1)  # [patches, layers, D]
        stacked = torch.stack([norm(x[:, idx]) for norm, idx in zip(self.norm_layer, self.layer_idx.tolist())], dim=1)
        return self.cross_attention(self.input_layer(x[:, -1]), stacked)


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity (the reference calls it compute_mseloss)."""
    return 1 - F.cosine_similarity(pred, target, dim=-1).mean()


def clip_l_336_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )


class EVELlamaForCausalLM(LlamaForCausalLM, VisionLanguageModel):
    family = "eve"
    chat_template = "vicuna_v1"

    def __init__(self, config: EVEConfig, with_patch_aligner: bool = False):
        super().__init__(config)
        self.model.vision_tower = VisionTokenizer(config.mm_hidden_size, config.patch_stride, config.conv_stride, config.pel_num_heads)
        self.model.mm_projector = build_projector(config.mm_projector_type, config.mm_hidden_size, config.hidden_size)
        if with_patch_aligner:
            clip_config = CLIPVisionConfig(**config.clip_vision_config) if config.clip_vision_config else clip_l_336_config()
            self.model.vision_clip = CLIPTeacher(clip_config, config.mm_vision_select_layer)
            max_patch = config.image_size // config.patch_stride // config.conv_stride
            max_patch_clip = config.image_size_clip // config.patch_stride
            if max_patch % max_patch_clip:
                raise CheckpointError(f"config.json: EVE needs the token grid ({max_patch}, from image_size) to be a "
                                      f"multiple of the CLIP grid ({max_patch_clip}, from image_size_clip)")
            self.model.vision_tower_compressor = VisionCompressor(
                config.hidden_size, clip_config.hidden_size, config.num_hidden_layers, max_patch // max_patch_clip,
                config.pal_layer_rate, config.pal_num_heads,
            )

    @property
    def decoder(self) -> nn.Module:
        return self

    def preprocess_spec(self, **overrides) -> PreprocessSpec:
        c = self.config
        fields = dict(kind="eve_anyres", image_size=c.image_size, mean=CLIP_MEAN, std=CLIP_STD,
                      image_size_clip=c.image_size_clip, patch_stride=c.patch_stride, conv_stride=c.conv_stride)
        return PreprocessSpec(**{**fields, **overrides})

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One image [1, 4, H, W] -> [1, 1 + h*(w+1), hidden]: PEL then projector, in the LLM's dtype."""
        return self.model.mm_projector(self.model.vision_tower(pixel_values))[None]

    def patch_align_loss(
        self,
        hidden_states: tuple[torch.Tensor, ...],
        image_starts: list[int | None],
        grids: list[tuple[int, int] | None],
        clip_pixels: torch.Tensor,
    ) -> torch.Tensor:
        """EVE's PAL loss over a batch: hidden_states from the LLM (all layers), where each sample's image
        rows start, their (w, h) grids, and the teacher's input [B, 4, clip, clip] (mask in channel 4)."""
        teacher = self.model.vision_clip(clip_pixels)
        masks = F.avg_pool2d(clip_pixels[:, -1:], kernel_size=self.config.patch_stride, stride=self.config.patch_stride)
        states = torch.stack(hidden_states, dim=2)  # [B, S, layers+1, D]
        total, count = states.new_zeros(()), 0
        for i, (start, grid) in enumerate(zip(image_starts, grids)):
            if start is None:
                # Text-only sample: a zero loss that still touches the aligner (as the reference does).
                pred = self.model.vision_tower_compressor.input_layer(states[i, :1, -1])
                total = total + cosine_loss(pred, pred.detach())
                continue
            w, h = grid
            pred = self.model.vision_tower_compressor(states[i, start : start + 1 + h * (w + 1)], grid)
            target = teacher[i][masks[i, 0].flatten() > 0]
            total = total + cosine_loss(pred, target.to(pred.dtype))
            count += 1
        return total / max(count, 1)
