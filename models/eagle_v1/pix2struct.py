"""Expert `pix2struct-1024`: the Pix2Struct-Large image encoder (google/pix2struct-large) with its own
re-processing, as EAGLE's `Pix2StructLargeVisionTower` does it (`pix2struct_encoder.py`), but in torch
inside the model so the expert exports to ONNX.

The reference undoes the CLIP normalisation, multiplies by 255 and calls the Pix2Struct processor
(transformers 4.x, `is_vqa=False`, max_patches 2048, patch 16): per-image standardisation (population std,
floored at 1/sqrt(n)), a bilinear antialiased resize to the largest patch grid within max_patches (45x45,
720 pixels, for a 1024 image), patches flattened as (row, column, channel) behind 1-based row and column
ids, padded to max_patches. The encoder runs, and the first 2025 tokens become a 45x45 map.

Here only the real patches enter the encoder. The reference masks the padding out of every attention,
so its first 2025 outputs are the same. Keys: `vision_tower.{embeddings.{patch_projection, row_embedder,
column_embedder}, encoder.layer.N.*, layernorm}` (transformers' Pix2StructVisionModel).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Pix2StructVisionConfig, Pix2StructVisionModel

from runtime.errors import CheckpointError
from runtime.preprocess import CLIP_MEAN, CLIP_STD

# google/pix2struct-large vision_config (as extracted in UiPath/pix2struct-vision-large); the processor's defaults.
PIX2STRUCT_L = dict(hidden_size=1536, d_ff=3968, d_kv=64, num_attention_heads=24, num_hidden_layers=18,
                    patch_embed_hidden_size=768, seq_len=4096, dense_act_fn="gelu_new", layer_norm_eps=1e-6)
MAX_PATCHES = 2048
PATCH_SIZE = 16


def pix2struct_config(overrides: dict | None = None) -> Pix2StructVisionConfig:
    fields = {**PIX2STRUCT_L, "initializer_range": 0.02, **(overrides or {})}
    return Pix2StructVisionConfig(**{k: v for k, v in fields.items() if k not in ("max_patches", "patch_size")})


def patch_grid(height: int, width: int, max_patches: int, patch: int) -> tuple[int, int]:
    """(rows, columns) of the processor's resize: the largest grid of the image's aspect within max_patches."""
    scale = (max_patches * (patch / height) * (patch / width)) ** 0.5
    rows = max(min(int(scale * height / patch), max_patches), 1)
    cols = max(min(int(scale * width / patch), max_patches), 1)
    return rows, cols


@lru_cache(maxsize=None)
def antialias_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """[out, in] weights of torch's antialiased bilinear resize along one axis, read off by resizing the identity.

    The resize is separable, so `A @ image @ B.T` is the processor's `interpolate(..., antialias=True)` as
    two matmuls: constants in an ONNX graph, where an antialiased Resize is not portable.
    """
    # Channel c holds an image whose row c is ones: its resize is column c of the weights. (Width 2, not 1:
    # torch's antialiased kernel mishandles an input one pixel wide.)
    eye = torch.eye(in_size, dtype=torch.float32, device="cpu")[None, :, :, None].expand(1, in_size, in_size, 2)
    resized = F.interpolate(eye.contiguous(), size=(out_size, 2), mode="bilinear", align_corners=False, antialias=True)
    return resized[0, :, :, 0].T.contiguous()


def image_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over channels, rows and columns [B, 1, 1, 1], one axis at a time: ONNX Runtime reduces all three
    axes in one running float32 sum (1e-5 relative off already at 3x128² values), and Pix2Struct's attention, unscaled,
    turns that into 1e-4 relative at the expert's output; axis by axis the error stays at float32 rounding."""
    return x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True)


class Pix2StructExpert(nn.Module):
    def __init__(self, image_size: int, overrides: dict | None = None):
        super().__init__()
        overrides = overrides or {}
        config = pix2struct_config(overrides)
        self.patch = overrides.get("patch_size", PATCH_SIZE)
        if config.patch_embed_hidden_size != 3 * self.patch**2:
            raise CheckpointError(f"config.json: vision_experts.pix2struct.patch_embed_hidden_size "
                                  f"{config.patch_embed_hidden_size} must be 3 * patch_size**2 ({3 * self.patch**2})")
        self.rows, self.cols = patch_grid(image_size, image_size, overrides.get("max_patches", MAX_PATCHES), self.patch)
        if max(self.rows, self.cols) >= config.seq_len:
            raise CheckpointError(f"config.json: vision_experts.pix2struct.seq_len {config.seq_len}: "
                                  f"{self.rows}x{self.cols} patches need it above {max(self.rows, self.cols)}")
        self.vision_tower = Pix2StructVisionModel(config)
        self.hidden_size = config.hidden_size
        self.input_size = image_size
        self.feature_grid = self.rows
        # Plain float32 attributes, not buffers: the reference re-processes in fp32 whatever the model's dtype.
        self.resize_rows = antialias_matrix(image_size, self.rows * self.patch)
        self.resize_cols = antialias_matrix(image_size, self.cols * self.patch)

    def reprocess(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised [B, 3, S, S] -> the processor's flattened patches [B, rows*cols, 2 + 3*patch*patch]
        (real patches only), in float32."""
        mean = torch.tensor(CLIP_MEAN, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 3, 1, 1)
        x = ((pixel_values * std + mean) * 255.0).float()
        b, c = x.shape[0], x.shape[1]
        centred = x - image_mean(x)
        std_dev = image_mean(centred.pow(2)).sqrt()
        x = centred / std_dev.clamp_min(1.0 / math.sqrt(x[0].numel()))
        x = self.resize_rows.to(x.device) @ x @ self.resize_cols.to(x.device).T
        p = self.patch
        patches = x.reshape(b, c, self.rows, p, self.cols, p).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(b, self.rows * self.cols, p * p * c)
        row_ids = torch.arange(1, self.rows + 1, dtype=torch.float32, device=x.device).repeat_interleave(self.cols)
        col_ids = torch.arange(1, self.cols + 1, dtype=torch.float32, device=x.device).repeat(self.rows)
        ids = torch.stack([row_ids, col_ids], dim=-1).expand(b, -1, -1)
        return torch.cat([ids, patches], dim=-1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised [B, 3, 1024, 1024] -> [B, 1536, 45, 45]."""
        model = self.vision_tower
        # Back to the dtype the pixels came in, which the caller chose to compute in (weights are cast to it a
        # block at a time when they are stored in another: models/precision.py).
        patches = self.reprocess(pixel_values).to(pixel_values.dtype)
        tokens = model.layernorm(model.encoder(model.embeddings(patches)).last_hidden_state)
        b, n, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, self.rows, self.cols)
