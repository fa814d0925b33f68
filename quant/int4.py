"""INT4 weights in groups along the input, and AWQ's search for the per-channel scales that protect them.

The arithmetic TensorRT-LLM's W4A16_AWQ / W4A8_AWQ kernels and ONNX Runtime's MatMulNBits compute: signed codes
-8..7, one float scale per (output row, group of `group` inputs) = the group's absolute max / 7, and AWQ's
pre-quant scale multiplying the activation first:

    y = (x * pre_scale) @ (codes * scales).T,    codes = round(w * s / scales) clamped,  pre_scale = 1 / s

AWQ (Lin et al., 2024) chooses s per input channel as act_mean**a / weight_mean**(1 - a), normalised, for the a
in a grid that gives the smallest output error on calibration activations; q/k/v (and gate/up) read the same
input and are searched together, so they share one s (one pre-quant scale, foldable into the norm before them).
"""

from __future__ import annotations

import torch

INT4_MAX = 7  # codes -8..7; the scale maps a group's absolute max to 7
GRID = 10  # AWQ's grid of exponents a = 0, 0.1, ..., 1 (nvidia-modelopt's awq_lite step)


def int4_codes(weight: torch.Tensor, group: int, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """float [out, in] -> signed codes int8 [out, in] and scales float32 [out, in / group]: each group's absolute
    max maps to the largest code (7 at 4 bits; 127 at 8, for the ORT engine's lm_head)."""
    top = 2 ** (bits - 1) - 1
    out_features, in_features = weight.shape
    blocks = weight.float().reshape(out_features, in_features // group, group)
    scales = blocks.abs().amax(dim=-1) / top
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero group: codes 0 whatever the scale
    codes = (blocks / safe[..., None]).round().clamp(-top - 1, top).to(torch.int8)
    return codes.reshape(out_features, in_features), scales


def fake_int4(weight: torch.Tensor, group: int) -> torch.Tensor:
    """float [out, in] -> the float weight its INT4 codes and scales compute with (int4_codes then
    dequantize_int4, in one pass over the weight: the scale search runs it for every exponent)."""
    out_features, in_features = weight.shape
    blocks = weight.reshape(out_features, in_features // group, group)
    scales = blocks.abs().amax(dim=-1, keepdim=True) / INT4_MAX
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    return (blocks / safe).round_().clamp_(-INT4_MAX - 1, INT4_MAX).mul_(scales).reshape(out_features, in_features)


def dequantize_int4(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """codes [out, in] x scales [out, in / group] -> the float32 weight the kernels compute with."""
    group = codes.shape[1] // scales.shape[1]
    return codes.float() * scales.float().repeat_interleave(group, dim=1)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit codes (out, in) -> TensorRT-LLM's int8 (out/2, in): row 2j in the low nibble, 2j+1 in the high."""
    nibbles = codes.to(torch.int16) & 0xF
    return (nibbles[0::2] | (nibbles[1::2] << 4)).to(torch.uint8).view(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int8 (out/2, in) -> signed 4-bit codes int8 (out, in): the low nibble is row 2j, the high row 2j+1."""
    byte = packed.view(torch.uint8).to(torch.int16)
    low, high = byte & 0xF, byte >> 4
    codes = torch.stack([low, high], dim=1).reshape(-1, packed.shape[1])  # rows 2j, 2j+1 interleaved
    return torch.where(codes > 7, codes - 16, codes).to(torch.int8)


def weight_mean(weight: torch.Tensor, group: int) -> torch.Tensor:
    """Per input channel, the mean over output rows of |w| relative to its group's max: AWQ's weight statistic."""
    out_features, in_features = weight.shape
    blocks = weight.abs().reshape(out_features, in_features // group, group)
    relative = blocks / blocks.amax(dim=-1, keepdim=True).clamp(min=1e-12)
    return relative.reshape(out_features, in_features).mean(dim=0)


def awq_scale(weight: torch.Tensor, activations: torch.Tensor, act_mean: torch.Tensor, group: int,
              grid: int = GRID) -> torch.Tensor:
    """The per-input-channel s (multiplying the weight's columns) with the least squared output error on
    `activations` [tokens, in] after INT4 quantization; float32 [in]. `act_mean`: mean |x| per channel over
    all calibration tokens."""
    weight = weight.float()
    x = activations.float()
    reference = x @ weight.T
    w_mean = weight_mean(weight, group)
    best_error, best = float("inf"), torch.ones_like(act_mean)
    for step in range(grid + 1):
        alpha = step / grid
        s = (act_mean.pow(alpha) / w_mean.pow(1 - alpha).clamp(min=1e-4)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        error = float((x @ (fake_int4(weight * s, group) / s).T - reference).pow_(2).mean())
        if error < best_error:
            best_error, best = error, s
    return best
