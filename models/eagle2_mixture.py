"""Eagle2-9B's vision tower (config.json `vision_config.model_type: MOB`): SigLIP and ConvNeXt-XXLarge on the same
448² tile, their features joined on the channel axis before `mlp1`. Faithful to the HF release's Eagle2 code
(`configuration_eagle2.py` `MultiBackboneChannelConcatenationVisionModelConfig`, `modeling_eagle2.py`, its
`multi_backbone_channel_concatenation_encoder.py`) and NVlabs/Eagle `Eagle2_5/eaglevl/model/multimodal_encoder/
convnext_encoder.py`:

- `vision_path` "MOB:" + tower names split on ";": `palisiglip` (SigLIP at 448, `siglip_vision_config`) and
  `convnext-1024` (ConvNeXt-XXLarge at `convnext_img_size`, the CLIP-trained model: with `normalize_type: siglip`
  the SigLIP-normalised tile is mapped to CLIP's mean/std first, `slip_to_clip`); keys
  `vision_model.vision_model.vision_towers.{i}.vision_tower.*` in `vision_path` order.
- `moe_version_type` null / `all_tiling`: each tower reads the tile resized (bilinear, align_corners) to its input
  size; features of another grid than `grid_size`² are resized likewise; the channels are concatenated in tower
  order, pixel-shuffled by `downsample_ratio` and go through `mlp1` (LayerNorm of 4·(1152 + 3072)).
- `convnext_512_siglip_448`: the SigLIP tokens are pixel-shuffled alone and the ConvNeXt tokens (stride 32, so
  `convnext_img_size` / 32 = grid·ratio per side) appended after them: LayerNorm(4·1152 + 3072).
The ConvNeXt's and SigLIP's classification heads are in the published tree and never used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from runtime.errors import CheckpointError
from runtime.preprocess import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD

from .eagle2_5 import Eagle25Config, SiglipTower, pixel_shuffle
from .eagle_v1.convnext import ConvNeXtExpert
from .eagle_v1.tower import resize_fp32

TOWERS = ("palisiglip", "convnext-1024")
MOE_TYPES = (None, "all_tiling", "convnext_512_siglip_448")


@dataclass(frozen=True)
class Mixture:
    """What the model needs from a MOB `vision_config`."""

    towers: tuple[str, ...]
    grid_size: int
    convnext_img_size: int
    siglip_img_size: int
    moe_version_type: str | None
    normalize_type: str
    siglip: dict
    convnext: dict  # Aerie's own: ConvNeXt widths for tiny test models (the published tower is XXLarge)

    @property
    def split(self) -> bool:
        return self.moe_version_type == "convnext_512_siglip_448"


def read_mixture(value: dict) -> Mixture:
    """The MOB vision_config, refused naming the field where upstream's code would not build it either."""
    names = tuple(str(value.get("vision_path", "")).removeprefix("MOB:").split(";"))
    if sorted(names) != sorted(TOWERS):
        raise CheckpointError(f"config.json: vision_config.vision_path {value.get('vision_path')!r} is not supported; "
                              f"Aerie builds the Eagle2-9B mixture 'MOB:' + {' and '.join(TOWERS)}")
    moe = value.get("moe_version_type")
    if moe not in MOE_TYPES:
        raise CheckpointError(f"config.json: vision_config.moe_version_type {moe!r} is not supported; upstream runs "
                              f"{', '.join(str(m) for m in MOE_TYPES)}")
    if value.get("mm_vision_select_layer", -2) > 100:
        raise CheckpointError("config.json: vision_config.mm_vision_select_layer > 100 (multi-stage ConvNeXt "
                              "features) is not supported")
    if not isinstance(value.get("siglip_vision_config"), dict):
        raise CheckpointError("config.json: vision_config.siglip_vision_config is missing; upstream builds the "
                              "SigLIP tower from it")
    normalize = value.get("normalize_type", "siglip")
    if normalize not in ("siglip", "clip"):
        raise CheckpointError(f"config.json: vision_config.normalize_type {normalize!r} is not supported")
    return Mixture(names, value.get("grid_size", 32), value.get("convnext_img_size", 1024),
                   value.get("siglip_img_size", 448), moe, normalize, value["siglip_vision_config"],
                   value.get("convnext_config", {}))


class SlipToClip(nn.Module):
    """SigLIP-normalised pixels -> CLIP-normalised ones (upstream's `slip_to_clip`: x·a + b per channel)."""

    def __init__(self):
        super().__init__()
        a = [s / c for s, c in zip(SIGLIP_STD, CLIP_STD)]
        b = [(m - cm) / cs for m, cm, cs in zip(SIGLIP_MEAN, CLIP_MEAN, CLIP_STD)]
        self.register_buffer("a", torch.tensor(a).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("b", torch.tensor(b).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.a + self.b).to(x.dtype)


class ConvNeXtTower(nn.Module):
    """Upstream's ConvNextVisionTower: keys `vision_tower.*`, output [b, (side/32)², channels]."""

    def __init__(self, mixture: Mixture):
        super().__init__()
        expert = ConvNeXtExpert(mixture.convnext_img_size, mixture.convnext)
        self.vision_tower = expert.vision_tower
        self.input_size, self.hidden_size = mixture.convnext_img_size, expert.hidden_size
        self.to_clip = SlipToClip() if mixture.normalize_type == "siglip" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(self.to_clip(x)).flatten(2).transpose(1, 2)


class SiglipMixtureTower(nn.Module):
    """Upstream's SiglipVisionTower: keys `vision_tower.vision_model.*`, the last hidden state."""

    def __init__(self, mixture: Mixture):
        super().__init__()
        config = Eagle25Config.read_vision_config(mixture.siglip)
        self.vision_tower = SiglipTower(config, -1)
        self.input_size, self.hidden_size = mixture.siglip_img_size, config.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(x)


class ChannelConcatenation(nn.Module):
    """`MultiBackboneChannelConcatenationVisionTower`: the towers in `vision_path` order under `vision_towers`."""

    def __init__(self, mixture: Mixture):
        super().__init__()
        self.mixture = mixture
        build = {"palisiglip": SiglipMixtureTower, "convnext-1024": ConvNeXtTower}
        self.vision_towers = nn.ModuleList(build[name](mixture) for name in mixture.towers)

    def tower(self, name: str) -> nn.Module:
        return self.vision_towers[self.mixture.towers.index(name)]

    def features(self, tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return tower(x if tower.input_size == x.shape[-1] else resize_fp32(x, tower.input_size))

    def on_grid(self, feature: torch.Tensor) -> torch.Tensor:
        """[b, n, c] brought to grid_size² tokens (upstream: bilinear, align_corners, unless n already fits)."""
        b, n, c = feature.shape
        grid = self.mixture.grid_size
        if n == grid * grid:
            return feature
        side = int(n**0.5)
        feature = resize_fp32(feature.transpose(1, 2).reshape(b, c, side, side), grid)
        return feature.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, downsample_ratio: float) -> torch.Tensor:
        """Tiles [n, 3, T, T] -> the features `mlp1` takes: [n, (grid·ratio)², channels]."""
        if self.mixture.split:
            siglip = self.features(self.tower("palisiglip"), x)
            side = int(siglip.shape[1] ** 0.5)
            siglip = pixel_shuffle(siglip.reshape(siglip.shape[0], side, side, -1), downsample_ratio)
            siglip = siglip.reshape(siglip.shape[0], -1, siglip.shape[-1])
            return torch.cat([siglip, self.features(self.tower("convnext-1024"), x)], dim=-1)
        joined = torch.cat([self.on_grid(self.features(t, x)) for t in self.vision_towers], dim=-1)
        grid = self.mixture.grid_size
        shuffled = pixel_shuffle(joined.reshape(joined.shape[0], grid, grid, -1), downsample_ratio)
        return shuffled.reshape(shuffled.shape[0], -1, shuffled.shape[-1])

    def connector_width(self, downsample_ratio: float) -> int:
        scale = int(1 / downsample_ratio) ** 2
        siglip, convnext = self.tower("palisiglip").hidden_size, self.tower("convnext-1024").hidden_size
        return siglip * scale + convnext if self.mixture.split else (siglip + convnext) * scale


class MixtureVisionModel(nn.Module):
    """`MultiBackboneChannelConcatenationVisionModel`: holds the tower under `vision_model`."""

    def __init__(self, mixture: Mixture):
        super().__init__()
        self.vision_model = ChannelConcatenation(mixture)
