"""FP8 (E4M3) tensors with one float32 scale each, as TensorRT-LLM's FP8 and W4A8 kernels take them: the scale
maps the calibrated absolute max to 448, E4M3's largest value, and w = fp8 * scale."""

from __future__ import annotations

import torch

FP8_MAX = 448.0


def fp8_scale(amax: torch.Tensor | float) -> torch.Tensor:
    """float32 (1,): amax / 448 (1 for an all-zero tensor)."""
    amax = torch.as_tensor(amax, dtype=torch.float32).reshape(1)
    return torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale as float8_e4m3fn, saturated at +-448 (values past the calibrated range clip, as on the GPU)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def fake_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x through FP8 and back: what the kernels compute with."""
    return to_fp8(x, scale).float() * scale
