"""The ONNX Runtime INT4 decoder (MatMulNBits), built from the quantized TensorRT-LLM checkpoint's files: the
CPU engine holds the very integers and scales the GPU engine is built from.

Layout change only: TensorRT-LLM packs two *output rows* a byte as signed values; MatMulNBits packs two
*inputs* a byte, unsigned with zero point 8, in blocks of `group_size` ([out, in/group, group/2]). The
scales are the same numbers ([out, in/group]).

AWQ's pre-quant scale multiplies a linear's input. Where a norm precedes the linear (q/k/v after the input
norm, gate/up after the post-attention norm) it is folded into that norm's weight, as TensorRT-LLM's
unified checkpoints do; the attention output and down projections get it as a Mul on their input.
The checkpoint is memory-mapped and each linear converted when the export reaches it, so a 7B decoder is
never held twice.

The lm_head stays float in the TensorRT-LLM checkpoint (as TensorRT-LLM's AWQ leaves it), but on the CPU it is
the biggest weight a decode step reads: at 110m twice the bytes of all the INT4 linears together, a quarter of
Qwen2.5-0.5B. `lm_head` chooses what the ORT graph holds: float, or the float weight rounded to 8 bits (blocks
of 128) or 4 bits (blocks of 32), symmetric; the accuracy report measures the choice with the rest.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from export.decoder import NBitsLinear, export_decoder

from .errors import QuantizationError
from .int4 import int4_codes, unpack_int4
from .modes import LM_HEADS
from .quantized import INPUT_NORM, LINEARS
from .trtllm import read_checkpoint

AWQ_ALGOS = ("W4A16_AWQ", "W4A8_AWQ")


def int4_linear(codes: torch.Tensor, scales: torch.Tensor, group_size: int, bias: torch.Tensor | None,
                pre_scale: torch.Tensor | None, accuracy_level: int) -> NBitsLinear:
    """Signed codes [out, in] and scales [out, in/group] as a MatMulNBits linear (zero point 8)."""
    linear = NBitsLinear.from_codes((codes.to(torch.int16) + 8).numpy().astype(np.uint8), scales.float().numpy(),
                                   group_size, bias=None if bias is None else bias.float().numpy(),
                                   accuracy_level=accuracy_level)
    return linear if pre_scale is None else replace(linear, pre_scale=pre_scale.float().numpy())


def round_to_nearest(weight: torch.Tensor, bits: int, block_size: int, accuracy_level: int,
                     rows: int = 8192) -> NBitsLinear:
    """float [out, in] -> symmetric codes of `bits` bits, one scale per block of inputs (its absolute max maps to
    the largest code); `rows` output rows at a time, so a 150k-word lm_head is never held in float32 whole."""
    out_features, in_features = weight.shape
    if in_features % block_size:
        raise QuantizationError(f"lm_head's input size {in_features} is not a multiple of {block_size}; build with "
                                "--lm-head float")
    chunks = [int4_codes(weight[start : start + rows], block_size, bits) for start in range(0, out_features, rows)]
    codes = torch.cat([c for c, _ in chunks]).to(torch.int16) + 2 ** (bits - 1)  # MatMulNBits' unsigned codes
    return NBitsLinear.from_codes(codes.to(torch.uint8).numpy(), torch.cat([s for _, s in chunks]).numpy(), block_size,
                                  accuracy_level=accuracy_level, bits=bits)


class CheckpointLinears(Mapping[str, NBitsLinear]):
    """The checkpoint's INT4 linears by Hugging Face module name ("model.layers.0.self_attn.q_proj"), each made
    from the memory-mapped tensors when asked for (export_decoder's `quantized`); "lm_head" too when `lm_head`
    quantizes it."""

    def __init__(self, decoder: nn.Module, tensors: dict[str, torch.Tensor], group_size: int, accuracy_level: int,
                 lm_head: str = "float"):
        self.tensors, self.group_size, self.accuracy_level = tensors, group_size, accuracy_level
        self.decoder, self.lm_head = decoder, LM_HEADS[lm_head]
        self.sources: dict[str, tuple[str, str, int, int]] = {}  # HF name -> (key prefix, linear, first row, rows)
        for i, layer in enumerate(decoder.model.layers):
            for trt_name, hf_names in LINEARS.items():
                row = 0
                for name in hf_names:
                    rows = layer.get_submodule(name).out_features
                    self.sources[f"model.layers.{i}.{name}"] = (f"transformer.layers.{i}.{trt_name}", trt_name, row, rows)
                    row += rows

    def __getitem__(self, name: str) -> NBitsLinear:
        if name == "lm_head" and self.lm_head is not None:
            bits, block_size = self.lm_head
            weight = self.decoder.get_output_embeddings().weight.detach()
            return round_to_nearest(weight, bits, block_size, self.accuracy_level)
        key, trt_name, row, rows = self.sources[name]
        t = self.tensors
        codes = unpack_int4(t[f"{key}.weight"])[row : row + rows]
        scales = t[f"{key}.weights_scaling_factor"][row : row + rows]
        bias = t.get(f"{key}.bias")
        # A pre-quant scale after a norm is folded into the norm (folded_norms); the others multiply the input.
        pre_scale = None if INPUT_NORM[trt_name] else t.get(f"{key}.prequant_scaling_factor")
        return int4_linear(codes, scales, self.group_size, None if bias is None else bias[row : row + rows],
                           pre_scale, self.accuracy_level)

    def __iter__(self) -> Iterator[str]:
        return iter([*self.sources, *(["lm_head"] if self.lm_head else [])])

    def __len__(self) -> int:
        return len(self.sources) + bool(self.lm_head)


def folded_norms(decoder: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The norms before q/k/v and gate/up with the pre-quant scale of the linears they feed folded in."""
    norms = {}
    for i, layer in enumerate(decoder.model.layers):
        for trt_name, norm in INPUT_NORM.items():
            scale = tensors.get(f"transformer.layers.{i}.{trt_name}.prequant_scaling_factor")
            if norm is None or scale is None:
                continue
            folded = layer.get_submodule(norm).weight.detach().float() * scale.float()
            name = f"model.layers.{i}.{norm}"
            # gate and up read one norm: one scale only (the quantizer searched them together)
            if name in norms and not np.array_equal(norms[name], folded.numpy()):
                raise QuantizationError(f"layer {i}: the linears after {norm} have different pre-quant scales; the "
                                        "checkpoint was not written by Aerie's quantizer")
            norms[name] = folded.numpy()
    return norms


def export_int4_decoder(decoder: nn.Module, checkpoint_dir: str | Path, engine_dir: str | Path, dtype: str = "float32",
                        max_length: int | None = None, accuracy_level: int = 4, lm_head: str = "float") -> dict:
    """Write decoder/model.onnx (MatMulNBits) + embed_tokens.npy from the checkpoint; returns the manifest part.
    `lm_head`: one of LM_HEADS."""
    if lm_head not in LM_HEADS:
        raise QuantizationError(f"lm_head {lm_head!r}: choose one of {', '.join(LM_HEADS)}")
    config, tensors = read_checkpoint(checkpoint_dir)
    quant = config.get("quantization") or {}
    if quant.get("quant_algo") not in AWQ_ALGOS:
        raise QuantizationError(f"{checkpoint_dir}: quant_algo {quant.get('quant_algo')!r}; the ONNX Runtime INT4 "
                                f"decoder is built from {' or '.join(AWQ_ALGOS)} checkpoints")
    linears = CheckpointLinears(decoder, tensors, int(quant["group_size"]), accuracy_level, lm_head)
    part = export_decoder(decoder, engine_dir, dtype, max_length, linears, folded_norms(decoder, tensors))
    part["quantization"] = {**part["quantization"], "source": "trtllm_checkpoint", "accuracy_level": accuracy_level,
                            "lm_head": lm_head}
    return part
