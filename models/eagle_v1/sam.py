"""Expert `sam-1024`: the SAM ViT-L image encoder (facebook/sam-vit-large) with EAGLE's short neck
(`sam_encoder.py`): the neck keeps only `conv1` (1x1, no bias) and the channels-first `layer_norm1`,
giving 64x64x256, and `pixel_unshuffle(2)` folds that into 32x32x1024 (channel c*4 + dy*2 + dx).

The encoder is transformers' SamVisionEncoder with its neck replaced, so the keys are the published
`vision_tower.{patch_embed.projection, pos_embed, layers.N.{layer_norm1, attn.{qkv, proj, rel_pos_h, rel_pos_w},
layer_norm2, mlp.{lin1, lin2}}, neck.{conv1, layer_norm1}}`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamVisionConfig

from runtime.errors import CheckpointError
from transformers.models.sam.modeling_sam import SamVisionEncoder

# facebook/sam-vit-large vision_config; the rest are SamVisionConfig's defaults (patch 16, window 14,
# output_channels 256, layer_norm_eps 1e-6, qkv bias, relative positions).
SAM_VIT_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_dim=4096,
                 global_attn_indexes=[5, 11, 17, 23])
UNSHUFFLE = 2


def sam_config(image_size: int, overrides: dict | None = None) -> SamVisionConfig:
    return SamVisionConfig(**{**SAM_VIT_L, "initializer_range": 0.02, **(overrides or {}), "image_size": image_size})


class ShortNeck(nn.Module):
    """conv1, then a LayerNorm over channels: normalised in fp32, cast back, then the affine (EAGLE's SamLayerNorm)."""

    def __init__(self, config: SamVisionConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(config.hidden_size, config.output_channels, kernel_size=1, bias=False)
        self.layer_norm1 = nn.LayerNorm(config.output_channels, eps=1e-6)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, H, W, hidden] -> [B, output_channels, H, W]."""
        x = self.conv1(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        norm = self.layer_norm1
        x = F.layer_norm(x.float(), norm.normalized_shape, eps=norm.eps).to(x.dtype)
        return (x * norm.weight + norm.bias).permute(0, 3, 1, 2)


class SamExpert(nn.Module):
    def __init__(self, image_size: int, overrides: dict | None = None):
        super().__init__()
        config = sam_config(image_size, overrides)
        grid = image_size // config.patch_size
        if image_size % config.patch_size or grid % UNSHUFFLE:
            raise CheckpointError(f"config.json: image_size {image_size} is not a multiple of "
                                  f"{config.patch_size * UNSHUFFLE}, which the SAM expert needs")
        self.vision_tower = SamVisionEncoder(config)
        self.vision_tower.neck = ShortNeck(config)
        self.hidden_size = config.output_channels * UNSHUFFLE**2
        self.input_size = image_size
        self.feature_grid = grid // UNSHUFFLE

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1024, 1024] -> [B, 1024, 32, 32]."""
        encoder = self.vision_tower
        x = encoder.patch_embed(pixel_values) + encoder.pos_embed
        for layer in encoder.layers:
            x = layer(x)
        return F.pixel_unshuffle(encoder.neck(x), UNSHUFFLE)
