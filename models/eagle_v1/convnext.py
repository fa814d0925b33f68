"""Expert `convnext-1024`: ConvNeXt-XXLarge (LAION CLIP `convnext_xxlarge.clip_laion2b_soup`) in timm's module
tree, written here in plain torch (timm would pull torchvision and a CUDA torch).

EAGLE (`vision_models/convnext.py`, a copy of timm's) runs the stem and the four stages; the last stage's
output, at stride 32, is the feature map (`convnext_encoder.py`). Its copy names the layer scale `weight`
where timm says `gamma` (its checkpoint filter renames gamma -> weight), so the keys are
`vision_tower.stem.{0,1}`, `stages.S.downsample.{0,1}`, `stages.S.blocks.B.{conv_dw, norm, mlp.fc1, mlp.fc2, weight}`.
The classifier head (`head.*`) is never used and not built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import CheckpointError


@dataclass(frozen=True)
class ConvNeXtConfig:
    depths: tuple[int, ...] = (3, 4, 30, 3)
    dims: tuple[int, ...] = (384, 768, 1536, 3072)
    kernel_size: int = 7
    patch_size: int = 4
    mlp_ratio: int = 4
    norm_eps: float = 1e-5  # timm's convnext_xxlarge sets 1e-5 (the other sizes use 1e-6)
    ls_init_value: float = 1e-6

    @property
    def stride(self) -> int:
        return self.patch_size * 2 ** (len(self.dims) - 1)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm and MLP channels-last, layer scale, residual."""

    def __init__(self, dim: int, config: ConvNeXtConfig):
        super().__init__()
        k = config.kernel_size
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=k, padding=k // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = Mlp(dim, config.mlp_ratio * dim)
        self.weight = nn.Parameter(torch.full((dim,), config.ls_init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        return x + y * self.weight.reshape(1, -1, 1, 1)


class ConvNeXtStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, stride: int, config: ConvNeXtConfig):
        super().__init__()
        if stride > 1 or in_dim != dim:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_dim, eps=config.norm_eps), nn.Conv2d(in_dim, dim, kernel_size=stride, stride=stride)
            )
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, config) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(nn.Module):
    def __init__(self, config: ConvNeXtConfig):
        super().__init__()
        dims = config.dims
        self.stem = nn.Sequential(
            nn.Conv2d(3, dims[0], kernel_size=config.patch_size, stride=config.patch_size),
            LayerNorm2d(dims[0], eps=config.norm_eps),
        )
        # timm: the first stage keeps the stem's stride, each later one halves the map (output stride 32).
        in_dims = (dims[0], *dims[:-1])
        strides = (1,) + (2,) * (len(dims) - 1)
        self.stages = nn.Sequential(
            *[ConvNeXtStage(*stage, config) for stage in zip(in_dims, dims, config.depths, strides)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class ConvNeXtExpert(nn.Module):
    def __init__(self, image_size: int, overrides: dict | None = None):
        super().__init__()
        config = ConvNeXtConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()})
        if image_size % config.stride:
            raise CheckpointError(f"config.json: image_size {image_size} is not a multiple of the ConvNeXt expert's "
                                  f"stride {config.stride}")
        self.vision_tower = ConvNeXt(config)
        self.hidden_size = config.dims[-1]
        self.input_size = image_size
        self.feature_grid = image_size // config.stride

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1024, 1024] -> [B, 3072, 32, 32], the last stage without norm or head."""
        return self.vision_tower(pixel_values)
