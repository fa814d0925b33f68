"""The mixture of vision experts: EAGLE's `MultiBackboneChannelConcatenationVisionTower`
(`multi_backbone_channel_concatenation_encoder.py`).

`mm_vision_tower` lists the experts, `;`-separated, in the order their channels are concatenated. Each
expert reads the 1024 image (resized, bilinear with align_corners, for one whose input size differs: CLIP),
and its feature map is resized the same way to the 32x32 grid unless it already is one. Both resizes run
in fp32 and are cast back, as the reference does. Keys `vision_towers.{i}.vision_tower.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import CheckpointError

from ..config_fields import shown
from .clip import ClipExpert
from .convnext import ConvNeXtExpert
from .eva_det import EvaDetExpert
from .pix2struct import Pix2StructExpert
from .sam import SamExpert

# Tower-string name -> expert kind (the key of EagleConfig.vision_experts).
EXPERTS = {
    "clip-448": "clip",
    "convnext-1024": "convnext",
    "sam-1024": "sam",
    "det-1024": "det",
    "pix2struct-1024": "pix2struct",
}


def parse_tower(tower: str) -> list[str]:
    """The expert kinds of a `mm_vision_tower` string, in its order."""
    names = [name.strip() for name in tower.split(";")]
    unknown = [name for name in names if name not in EXPERTS]
    if unknown or len(set(names)) != len(names):
        raise CheckpointError(
            f"config.json: mm_vision_tower {shown(tower)}: expected distinct experts from {', '.join(EXPERTS)} "
            "separated by ';'" + (f"; unknown {shown(unknown)}" if unknown else "")
        )
    return [EXPERTS[name] for name in names]


def build_expert(kind: str, image_size: int, overrides: dict | None = None) -> nn.Module:
    if kind == "clip":
        return ClipExpert(overrides)
    if kind == "convnext":
        return ConvNeXtExpert(image_size, overrides)
    if kind == "sam":
        return SamExpert(image_size, overrides)
    if kind == "det":
        return EvaDetExpert(image_size, overrides)
    return Pix2StructExpert(image_size, overrides)


def resize_fp32(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, align_corners=True, computed in fp32 and cast back."""
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=True).to(x.dtype)


class ChannelConcatTower(nn.Module):
    def __init__(self, tower: str, image_size: int = 1024, grid_size: int = 32, experts: dict[str, dict] | None = None):
        super().__init__()
        self.kinds = parse_tower(tower)
        unused = set(experts or {}) - set(self.kinds)
        if unused:
            raise CheckpointError(f"config.json: vision_experts configures {sorted(unused)}, which mm_vision_tower "
                                  f"{tower!r} does not use")
        self.image_size = image_size
        self.grid_size = grid_size
        self.vision_towers = nn.ModuleList([build_expert(k, image_size, (experts or {}).get(k)) for k in self.kinds])

    @property
    def hidden_size(self) -> int:
        """Channels after concatenation (mm_hidden_size)."""
        return sum(expert.hidden_size for expert in self.vision_towers)

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1024, 1024] CLIP-normalised -> [B, 1024, mm_hidden]."""
        features = []
        for expert in self.vision_towers:
            x = pixel_values
            if expert.input_size != self.image_size:
                x = resize_fp32(pixel_values, expert.input_size)
            feature = expert(x)
            if expert.feature_grid != self.grid_size:
                feature = resize_fp32(feature, self.grid_size)
            features.append(feature.flatten(2).transpose(1, 2))
        return torch.cat(features, dim=-1)
