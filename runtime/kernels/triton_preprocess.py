"""Normalize and tile on the GPU: a uint8 HWC image, already resized on the host, becomes normalized float32
CHW tiles in device memory, ready for the TensorRT vision engine, without a trip through the CPU.

Each output element is `(x / 255 - mean[c]) / std[c]` with correctly rounded float32 division, the same
arithmetic as `runtime.preprocess.normalize`, so both paths give the same bits. The host keeps the resize
(Pillow's bicubic filter is the reference and has no exact GPU twin).

Tests run it with TRITON_INTERPRET=1 (no GPU); on a GPU it compiles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import triton
import triton.language as tl

if TYPE_CHECKING:
    import torch

BLOCK = 1024


@triton.jit
def _normalize_tiles_kernel(image_ptr, out_ptr, mean_ptr, std_ptr, width, cols, tile_h, tile_w,
                            BLOCK: tl.constexpr):
    """One program: one (tile, channel) plane, BLOCK of its pixels."""
    plane = tl.program_id(0)  # tile * 3 + channel
    tile, channel = plane // 3, plane % 3
    pixel = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = pixel < tile_h * tile_w
    y, x = pixel // tile_w, pixel % tile_w
    row = (tile // cols) * tile_h + y
    col = (tile % cols) * tile_w + x
    value = tl.load(image_ptr + (row * width + col) * 3 + channel, mask=inside, other=0).to(tl.float32)
    mean = tl.load(mean_ptr + channel)
    std = tl.load(std_ptr + channel)
    scaled = tl.math.div_rn(value, 255.0)
    tl.store(out_ptr + plane * tile_h * tile_w + pixel, tl.math.div_rn(scaled - mean, std), mask=inside)


def normalize_tiles(image: torch.Tensor, tile_h: int, tile_w: int, mean: Sequence[float], std: Sequence[float],
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [H, W, 3] (H, W multiples of the tile) -> float32 [rows * cols, 3, tile_h, tile_w], tiles in
    row-major order. `out` may be a slice of a larger batch (e.g. all tiles then the thumbnail)."""
    import torch  # the caller's tensors are torch's already; imported here so `runtime` never imports it itself

    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}")
    height, width = image.shape[:2]
    if height % tile_h or width % tile_w:
        raise ValueError(f"image {height}x{width} is not a whole number of {tile_h}x{tile_w} tiles")
    rows, cols = height // tile_h, width // tile_w
    shape = (rows * cols, 3, tile_h, tile_w)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=image.device)
    if tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 {list(shape)}, got {out.dtype} {list(out.shape)}")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=image.device)
    std_t = torch.tensor(std, dtype=torch.float32, device=image.device)
    grid = (rows * cols * 3, triton.cdiv(tile_h * tile_w, BLOCK))
    _normalize_tiles_kernel[grid](image.contiguous(), out, mean_t, std_t, width, cols, tile_h, tile_w, BLOCK=BLOCK)
    return out
