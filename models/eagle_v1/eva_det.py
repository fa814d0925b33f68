"""Expert `det-1024`: the EVA-02-L ViTDet backbone (`eva02_L_coco_det_sys_o365`) as EAGLE builds it
(`vision_models/eva_vit.py`, `build_eva_vit("eva02-l-16")`).

Patch 16, width 1024, 24 blocks of 16 heads. Each block: LayerNorm, attention with bias-free q/k/v
projections plus separate `q_bias`/`v_bias` and 2D rotary embeddings (a 16x16 table in window blocks,
a 64x64 one interpolated from the 16x16 pretraining grid in global blocks), LayerNorm, SwiGLU MLP with a
LayerNorm on its hidden layer (`ffn_ln`). 16x16 window attention everywhere but blocks 2, 5, ..., 23.
The absolute position embedding of the 224 pretraining (14x14 + CLS) is resized bicubically to the grid.
No final norm; the output is the 64x64 map. The rotary tables are recomputed, never loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import CheckpointError

WINDOW_BLOCKS_L = tuple(i for i in range(24) if i % 3 != 2)  # (0, 1, 3, 4, ..., 21, 22)


@dataclass(frozen=True)
class EvaDetConfig:
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    patch_size: int = 16
    window_size: int = 16
    window_block_indexes: tuple[int, ...] = WINDOW_BLOCKS_L
    mlp_ratio: float = 4 * 2 / 3
    pretrain_img_size: int = 224
    pt_hw_seq_len: int = 16
    norm_eps: float = 1e-6

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)  # 2730 for EVA-02-L


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): rotation of interleaved pairs."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def rope_tables(head_dim: int, side: int, pt_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [side*side, head_dim] of EVA's VisionRotaryEmbeddingFast: half the channels rotate with the
    row, half with the column, positions scaled to the pretraining grid `pt_seq_len`, each frequency twice."""
    dim = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim))
    t = torch.arange(side, dtype=torch.float32) / side * pt_seq_len
    per_axis = torch.outer(t, freqs).repeat_interleave(2, dim=-1)  # [side, dim]
    rows = per_axis[:, None, :].expand(side, side, dim)
    cols = per_axis[None, :, :].expand(side, side, dim)
    angles = torch.cat([rows, cols], dim=-1).reshape(side * side, head_dim)
    return angles.cos(), angles.sin()


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, side: int, pt_seq_len: int):
        super().__init__()
        cos, sin = rope_tables(head_dim, side, pt_seq_len)
        # Not persistent: the published checkpoints carry these tables, Aerie recomputes them.
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.freqs_cos + rotate_half(t) * self.freqs_sin


class Attention(nn.Module):
    def __init__(self, config: EvaDetConfig):
        super().__init__()
        dim = config.embed_dim
        self.num_heads = config.num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        """[B, H, W, C] -> [B, H, W, C]; `rope` holds the table for H*W positions."""
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        q = F.linear(x, self.q_proj.weight, self.q_bias)
        k = self.k_proj(x)
        v = F.linear(x, self.v_proj.weight, self.v_bias)
        q, k, v = (t.reshape(b, h * w, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        q = rope(q).type_as(v)
        k = rope(k).type_as(v)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as the reference
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class SwiGLU(nn.Module):
    def __init__(self, config: EvaDetConfig):
        super().__init__()
        dim, hidden = config.embed_dim, config.mlp_hidden
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.ffn_ln = nn.LayerNorm(hidden, eps=config.norm_eps)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(self.act(self.w1(x)) * self.w2(x)))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of window) -> [B * windows, window, window, C], windows row by row."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c)


def window_unpartition(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class Block(nn.Module):
    def __init__(self, config: EvaDetConfig, window_size: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.mlp = SwiGLU(config)
        self.window_size = window_size  # 0: global attention

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size:
            h, w = x.shape[1], x.shape[2]
            pad_h, pad_w = -h % self.window_size, -w % self.window_size
            # Zero padding after the norm, attended like real tokens, as the reference does.
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
            x = window_partition(x, self.window_size)
            x = self.attn(x, rope)
            x = window_unpartition(x, self.window_size, h + pad_h, w + pad_w)[:, :h, :w]
        else:
            x = self.attn(x, rope)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config: EvaDetConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class EVAViT(nn.Module):
    def __init__(self, config: EvaDetConfig, image_size: int):
        super().__init__()
        self.patch_embed = PatchEmbed(config)
        pretrain_grid = config.pretrain_img_size // config.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid + 1, config.embed_dim))
        nn.init.normal_(self.pos_embed, std=0.02)
        head_dim = config.embed_dim // config.num_heads
        self.rope_win = RotaryEmbedding(head_dim, config.window_size, config.pt_hw_seq_len)
        self.rope_glb = RotaryEmbedding(head_dim, image_size // config.patch_size, config.pt_hw_seq_len)
        windowed = set(config.window_block_indexes)
        self.blocks = nn.ModuleList(
            [Block(config, config.window_size if i in windowed else 0) for i in range(config.depth)]
        )

    def abs_pos(self, h: int, w: int) -> torch.Tensor:
        """The pretraining position embedding without its CLS entry, bicubic-resized (fp32) to [1, h, w, C]."""
        pos = self.pos_embed[:, 1:]
        side = math.isqrt(pos.shape[1])
        grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False).to(pos.dtype)
        return grid.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, C, S/16, S/16]."""
        x = self.patch_embed(x)
        x = x + self.abs_pos(x.shape[1], x.shape[2])
        for block in self.blocks:
            x = block(x, self.rope_win if block.window_size else self.rope_glb)
        return x.permute(0, 3, 1, 2)


class EvaDetExpert(nn.Module):
    def __init__(self, image_size: int, overrides: dict | None = None):
        super().__init__()
        config = EvaDetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()})
        if image_size % config.patch_size:
            raise CheckpointError(f"config.json: image_size {image_size} is not a multiple of the det expert's "
                                  f"patch_size {config.patch_size}")
        self.vision_tower = EVAViT(config, image_size)
        self.hidden_size = config.embed_dim
        self.input_size = image_size
        self.feature_grid = image_size // config.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1024, 1024] -> [B, 1024, 64, 64]."""
        return self.vision_tower(pixel_values)
