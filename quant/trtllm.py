"""The quantized TensorRT-LLM checkpoint (config.json + rank0.safetensors): the quantizer's canonical output,
which every other form is made from (the ONNX Runtime INT4 decoder, the fake-quant PyTorch decoder, the
Hugging Face checkpoint). config.json is export/trtllm.py's with the `quantization` block
(quant/quantized.py); the embeddings, norms, biases and lm_head are the unquantized writer's tensors.

Layouts (TensorRT-LLM's checkpoint format, as nvidia-modelopt writes it):
- FP8: `<linear>.weight` float8_e4m3fn (out, in); `weights_scaling_factor` and `activation_scaling_factor`
  float32 (1,): w = weight * weights_scaling_factor.
- W4A16_AWQ / W4A8_AWQ: `<linear>.weight` int8 (out/2, in), signed 4-bit values two output rows a byte
  (row 2j in the low nibble, 2j+1 in the high); `weights_scaling_factor` float32 (out, in/group):
  w[o, i] = q[o, i] * weights_scaling_factor[o, i // group]; `prequant_scaling_factor` (in,) in the
  checkpoint dtype multiplies the activation first: y = (x * prequant_scaling_factor) @ w.T.
  W4A8 adds `weights_scaling_factor_2` and `activation_scaling_factor` (1,): the INT4 weight goes through FP8.
- FP8 KV cache: `attention.{k,v,kv}_cache_scaling_factor` float32 (1,) per layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from models.tensor_file import write_safetensors
from export.trtllm import CONFIG, DTYPES, WEIGHTS, checkpoint_tensors, trtllm_config

from .errors import QuantizationError
from .quantized import QuantizedDecoder, QuantizedLinear


def write_quantized_trtllm_checkpoint(decoder: nn.Module, quantized: QuantizedDecoder, out_dir: str | Path,
                                      dtype: str = "float16") -> Path:
    """Write the checkpoint of `decoder` (model.decoder) with its linears replaced by `quantized`'s."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cast = DTYPES[dtype]
    tensors: dict = checkpoint_tensors(decoder, dtype, linears=False)
    for i, linears in enumerate(quantized.layers):
        for name, linear in linears.items():
            tensors.update(linear.tensors(f"transformer.layers.{i}.{name}", cast))
        if quantized.kv_cache_scales is not None:
            for kind, scale in quantized.kv_cache_scales[i].items():
                tensors[f"transformer.layers.{i}.attention.{kind}_cache_scaling_factor"] = scale
    write_safetensors(out_dir / WEIGHTS, tensors, metadata={"format": "pt"})
    config = trtllm_config(decoder, dtype, quantization=quantized.quantization())
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def read_checkpoint(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and the tensors (memory-mapped) of a TensorRT-LLM checkpoint."""
    directory = Path(directory)
    return json.loads((directory / CONFIG).read_text()), load_file(str(directory / WEIGHTS))


def read_linear(tensors: dict[str, torch.Tensor], prefix: str) -> QuantizedLinear:
    """One quantized linear of a checkpoint read back."""
    if f"{prefix}.weights_scaling_factor" not in tensors:
        raise QuantizationError(f"{prefix} is not quantized in this checkpoint; it was not written by a quantizer")

    def get(suffix: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor | None:
        t = tensors.get(f"{prefix}.{suffix}")
        return None if t is None or dtype is None else t.to(dtype)

    return QuantizedLinear(tensors[f"{prefix}.weight"], get("weights_scaling_factor"), get("prequant_scaling_factor"),
                           get("activation_scaling_factor"), get("weights_scaling_factor_2"), get("bias"))
