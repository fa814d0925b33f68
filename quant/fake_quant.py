"""The quantized TensorRT-LLM checkpoint computed in PyTorch: what the GPU engine built from it computes (FP8
activations and weights, INT4 weights with their pre-quant scale, W4A8's FP8 stage), for the accuracy report's
rows whose quantization no CPU engine executes and for the tests.

`fake_quant_decoder(model.decoder, checkpoint_dir)` is a bare Hugging Face causal LM sharing the model's
embeddings, norms and lm_head (no copy), with each projection replaced by a `FakeQuantLinear` that reads the
checkpoint's memory-mapped tensors and dequantizes them at every call. With an FP8 KV cache the keys and values
go through FP8 with the layer's cache scale as they leave k_proj and v_proj: exact for the values, and for the
keys before the rotary embedding rather than after it (TensorRT-LLM caches rotated keys), which the report
accepts as a close stand-in.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import LlamaForCausalLM, Qwen2ForCausalLM
from transformers.initialization import no_init_weights

from .fp8 import fake_fp8
from .int4 import dequantize_int4, unpack_int4
from .quantized import LINEARS, QuantizedLinear
from .trtllm import read_checkpoint, read_linear


class FakeQuantLinear(nn.Module):
    """Rows [start, start + rows) of a quantized TensorRT-LLM linear (q, k or v of the merged qkv)."""

    def __init__(self, linear: QuantizedLinear, start: int, rows: int, output_scale: torch.Tensor | None = None):
        super().__init__()
        self.linear, self.start, self.rows, self.output_scale = linear, start, rows, output_scale

    def weight(self) -> torch.Tensor:
        q = self.linear
        if q.weight.dtype == torch.float8_e4m3fn:
            return q.weight[self.start : self.start + self.rows].float() * q.weights_scaling_factor
        end = self.start + self.rows
        # Packed two rows a byte: the slice starts on an even row (every projection's width is even).
        codes = unpack_int4(q.weight[self.start // 2 : (end + 1) // 2])[: self.rows]
        weight = dequantize_int4(codes, q.weights_scaling_factor[self.start : end])
        return weight if q.weights_scaling_factor_2 is None else fake_fp8(weight, q.weights_scaling_factor_2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.linear
        x = x.float()
        if q.prequant_scaling_factor is not None:
            x = x * q.prequant_scaling_factor
        if q.activation_scaling_factor is not None:
            x = fake_fp8(x, q.activation_scaling_factor)
        y = x @ self.weight().T
        if q.bias is not None:
            y = y + q.bias[self.start : self.start + self.rows]
        return y if self.output_scale is None else fake_fp8(y, self.output_scale)


def fake_quant_decoder(decoder: nn.Module, checkpoint_dir: str | Path) -> nn.Module:
    """`decoder` (model.decoder) with its projections computing the quantized checkpoint."""
    _, tensors = read_checkpoint(checkpoint_dir)
    cls = Qwen2ForCausalLM if isinstance(decoder, Qwen2ForCausalLM) else LlamaForCausalLM
    with no_init_weights():
        stand_in = cls(decoder.config)
    shared = dict(decoder.named_parameters(remove_duplicate=False))
    for name, _ in list(stand_in.named_parameters(remove_duplicate=False)):
        module_name, _, attr = name.rpartition(".")
        stand_in.get_submodule(module_name)._parameters[attr] = shared[name]
    for i, layer in enumerate(stand_in.model.layers):
        for trt_name, hf_names in LINEARS.items():
            linear = read_linear(tensors, f"transformer.layers.{i}.{trt_name}")
            start = 0
            for hf_name in hf_names:
                rows = layer.get_submodule(hf_name).out_features
                parent, _, attr = hf_name.rpartition(".")
                cache = tensors.get(f"transformer.layers.{i}.attention.kv_cache_scaling_factor")
                kv = cache.float() if cache is not None and attr in ("k_proj", "v_proj") else None
                setattr(layer.get_submodule(parent), attr, FakeQuantLinear(linear, start, rows, kv))
                start += rows
    return stand_in.eval()
