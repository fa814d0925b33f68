"""What the quantizer produces and the checkpoint writers read: every linear of the decoder under TensorRT-LLM's
name, with its quantized weight and scaling factors in TensorRT-LLM's layout (quant/trtllm.py documents it).

TensorRT-LLM merges q/k/v into `attention.qkv`; `mlp.fc` is Hugging Face's gate_proj (the activated branch) and
`mlp.gate` its up_proj (export/trtllm.py). Linears that read one input share its pre-quant scale and, in FP8
modes, its activation and weight scales (q/k/v by merging; gate/up by the quantizer), as fused engines need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .modes import QuantMode

# TensorRT-LLM linear -> the Hugging Face projections it holds, in row order.
LINEARS = {
    "attention.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attention.dense": ("self_attn.o_proj",),
    "mlp.fc": ("mlp.gate_proj",),
    "mlp.gate": ("mlp.up_proj",),
    "mlp.proj": ("mlp.down_proj",),
}
# The norm whose output each linear reads (where its pre-quant scale can be folded), or None.
INPUT_NORM = {"attention.qkv": "input_layernorm", "mlp.fc": "post_attention_layernorm",
              "mlp.gate": "post_attention_layernorm", "attention.dense": None, "mlp.proj": None}


@dataclass
class QuantizedLinear:
    """One TensorRT-LLM linear. int4: `weight` int8 (out/2, in) packed, `weights_scaling_factor` float32
    (out, in/group); fp8: `weight` float8_e4m3fn (out, in), `weights_scaling_factor` float32 (1,)."""

    weight: torch.Tensor
    weights_scaling_factor: torch.Tensor
    prequant_scaling_factor: torch.Tensor | None = None  # float32 (in,): AWQ, multiplies the input
    activation_scaling_factor: torch.Tensor | None = None  # float32 (1,): FP8 activations
    weights_scaling_factor_2: torch.Tensor | None = None  # float32 (1,): W4A8's FP8 stage of the weight
    bias: torch.Tensor | None = None

    def tensors(self, prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors of this linear; the pre-quant scale and bias in the checkpoint's dtype."""
        out = {f"{prefix}.weight": self.weight, f"{prefix}.weights_scaling_factor": self.weights_scaling_factor}
        if self.prequant_scaling_factor is not None:
            out[f"{prefix}.prequant_scaling_factor"] = self.prequant_scaling_factor.to(dtype)
        if self.activation_scaling_factor is not None:
            out[f"{prefix}.activation_scaling_factor"] = self.activation_scaling_factor
        if self.weights_scaling_factor_2 is not None:
            out[f"{prefix}.weights_scaling_factor_2"] = self.weights_scaling_factor_2
        if self.bias is not None:
            out[f"{prefix}.bias"] = self.bias.to(dtype)
        return out


@dataclass
class QuantizedDecoder:
    """Every layer's linears by TensorRT-LLM name, and FP8 KV-cache scales when asked for."""

    mode: QuantMode
    group_size: int
    layers: list[dict[str, QuantizedLinear]] = field(default_factory=list)
    kv_cache_scales: list[dict[str, torch.Tensor]] | None = None  # per layer: k, v, kv float32 (1,)

    def quantization(self) -> dict:
        """The checkpoint config's `quantization` block (TensorRT-LLM's QuantConfig fields)."""
        block: dict = {"quant_algo": self.mode.quant_algo,
                       "kv_cache_quant_algo": "FP8" if self.kv_cache_scales is not None else None}
        if self.mode.int4:
            block.update(group_size=self.group_size, has_zero_point=False, pre_quant_scale=True)
        block["exclude_modules"] = ["lm_head"]
        return block
