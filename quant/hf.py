"""The quantized Hugging Face checkpoint: the whole vision-language model with its language model quantized, in
nvidia-modelopt's unified format (`hf_quant_config.json` + `quantization_config` in config.json, which vLLM,
SGLang and TensorRT-LLM's PyTorch backend read); the vision tower and projector stay unquantized, as modelopt's
own VLM flow leaves them.

Made from the quantized TensorRT-LLM checkpoint (the same integers and scales) and the source checkpoint's other
tensors, written a tensor at a time. Per Hugging Face linear, as modelopt writes them:
- FP8: `weight` float8_e4m3fn, `weight_scale` and `input_scale` float32 scalars; an FP8 KV cache adds
  `k_proj.k_scale` and `v_proj.v_scale`.
- W4A16_AWQ / W4A8_AWQ: `weight` uint8 (out/2, in), two output rows a byte (TensorRT-LLM's packing),
  `weight_scale` float32 (out, in/group); the pre-quant scale of q/k/v and gate/up folded into the norm before
  them, `pre_quant_scale` (in,) on o_proj and down_proj. W4A8 adds `input_scale` and `weight_scale_2` scalars.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from export.trtllm import DTYPES
from models.checkpoint import CONFIG, SAFETENSORS, SAFETENSORS_INDEX, read_config, read_state_dict
from models.tensor_file import Pending, write_shards

from .quantized import INPUT_NORM, LINEARS
from .trtllm import read_checkpoint

HF_QUANT_CONFIG = "hf_quant_config.json"
# Weights and shard indexes of any layout (a sharded release's model-0000N-of-0000M.safetensors included): the
# quantized checkpoint writes its own, and copies none of the source's.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
PRODUCER = {"name": "aerie", "version": "0.1.0"}
SHARD_BYTES = 2 * 1024**3


def decoder_prefix(model: nn.Module) -> str:
    """Where the language model sits in the full model's state dict ("" or "language_model.")."""
    for name, module in model.named_modules():
        if module is model.decoder:
            return f"{name}." if name else ""
    raise AssertionError("model.decoder is not a submodule of the model")


def module_patterns(keys: list[str]) -> list[str]:
    """Exclude patterns for the modules outside the language model, from their tensor names."""
    names = set()
    for key in keys:
        parts = key.split(".")
        # EVE/Eagle v1 keep the vision tower inside the Llama body: model.vision_tower.*, model.mm_projector.*
        names.add(".".join(parts[:2]) if parts[0] == "model" else parts[0])
    return sorted(f"{name}*" for name in names)


def quantization_config(quant: dict, excluded: list[str]) -> tuple[dict, dict]:
    """(hf_quant_config.json, config.json's quantization_config) for the TensorRT-LLM `quantization` block."""
    block = {k: v for k, v in quant.items() if k != "exclude_modules"}
    hf_quant = {"producer": PRODUCER, "quantization": {**block, "exclude_modules": excluded}}
    config = {"ignore": excluded, "producer": PRODUCER, "quant_algo": quant["quant_algo"], "quant_method": "modelopt"}
    if quant["quant_algo"] == "FP8":
        fp8 = {"dynamic": False, "num_bits": 8, "type": "float"}
        config["config_groups"] = {"group_0": {"input_activations": fp8, "targets": ["Linear"], "weights": fp8}}
    if quant.get("kv_cache_quant_algo") == "FP8":
        config["kv_cache_scheme"] = {"dynamic": False, "num_bits": 8, "type": "float"}
    return hf_quant, config


def scalar(t: torch.Tensor) -> torch.Tensor:
    return t.float().reshape(())


def linear_tensors(trt: dict[str, torch.Tensor], layer: nn.Module, i: int, prefix: str, cast: torch.dtype
                   ) -> dict[str, torch.Tensor | Pending]:
    """One layer's quantized projections (and the norms their pre-quant scales fold into) under HF names."""
    out: dict[str, torch.Tensor | Pending] = {}
    base = f"{prefix}model.layers.{i}."
    for trt_name, hf_names in LINEARS.items():
        key = f"transformer.layers.{i}.{trt_name}"
        weight, w_scale = trt[f"{key}.weight"], trt[f"{key}.weights_scaling_factor"]
        pre, act = trt.get(f"{key}.prequant_scaling_factor"), trt.get(f"{key}.activation_scaling_factor")
        w_scale_2, bias = trt.get(f"{key}.weights_scaling_factor_2"), trt.get(f"{key}.bias")
        int4 = weight.dtype == torch.int8
        row = 0
        for hf_name in hf_names:
            rows = layer.get_submodule(hf_name).out_features
            name = base + hf_name
            if int4:
                out[f"{name}.weight"] = weight[row // 2 : (row + rows) // 2].view(torch.uint8)
                out[f"{name}.weight_scale"] = w_scale[row : row + rows]
                if pre is not None and INPUT_NORM[trt_name] is None:
                    out[f"{name}.pre_quant_scale"] = pre
                if w_scale_2 is not None:
                    out[f"{name}.weight_scale_2"] = scalar(w_scale_2)
            else:
                out[f"{name}.weight"] = weight[row : row + rows]
                out[f"{name}.weight_scale"] = scalar(w_scale)
            if act is not None:
                out[f"{name}.input_scale"] = scalar(act)
            if bias is not None:
                out[f"{name}.bias"] = bias[row : row + rows]
            row += rows
        norm = INPUT_NORM[trt_name]
        if pre is not None and norm is not None:
            weight = layer.get_submodule(norm).weight
            out[f"{base}{norm}.weight"] = Pending(cast, tuple(weight.shape),
                                                  lambda w=weight, s=pre: (w.detach().float() * s.float()).to(cast))
    for kind in ("k", "v"):
        scale = trt.get(f"transformer.layers.{i}.attention.{kind}_cache_scaling_factor")
        if scale is not None:
            out[f"{base}self_attn.{kind}_proj.{kind}_scale"] = scalar(scale)
    return out


def write_quantized_hf_checkpoint(model: nn.Module, trtllm_dir: str | Path, checkpoint: str | Path,
                                  out_dir: str | Path, dtype: str = "float16") -> Path:
    """Write the full model's checkpoint into `out_dir`: the quantized language model of `trtllm_dir` plus every
    other tensor of `checkpoint` in `dtype`, its config with the quantization block, and its tokenizer files."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cast = DTYPES[dtype]
    trt_config, trt = read_checkpoint(trtllm_dir)
    prefix = decoder_prefix(model)
    layers = model.decoder.model.layers
    quantized: dict[str, torch.Tensor | Pending] = {}
    for i, layer in enumerate(layers):
        quantized.update(linear_tensors(trt, layer, i, prefix, cast))
    source = read_state_dict(checkpoint)

    def as_dtype(t: torch.Tensor) -> torch.Tensor | Pending:
        return Pending(cast, tuple(t.shape), lambda: t.to(cast)) if t.is_floating_point() and t.dtype != cast else t

    tensors = {k: as_dtype(v) for k, v in source.items() if k not in quantized}
    tensors.update(quantized)
    language = (prefix + "model.layers.", prefix + "model.embed_tokens.", prefix + "model.norm.", prefix + "lm_head.")
    outside = [k for k in source if not k.startswith(language)]
    excluded = [prefix + "lm_head", prefix + "model.embed_tokens"] + module_patterns(outside)
    hf_quant, quant_config = quantization_config(trt_config["quantization"], excluded)
    config = read_config(checkpoint)
    config["quantization_config"] = quant_config
    config["torch_dtype"] = dtype
    write_shards(out_dir, tensors, SHARD_BYTES, SAFETENSORS, SAFETENSORS_INDEX)
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out_dir / HF_QUANT_CONFIG).write_text(json.dumps(hf_quant, indent=4) + "\n")
    for extra in checkpoint.iterdir():  # tokenizer, generation config, chat template, custom code
        if (extra.is_file() and extra.name not in (CONFIG, HF_QUANT_CONFIG) and not extra.name.endswith(WEIGHT_SUFFIXES)
                and not extra.name.startswith(".")):
            shutil.copy2(extra, out_dir / extra.name)
    return out_dir
