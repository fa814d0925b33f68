"""TensorRT-LLM checkpoints of the Llama (EVE, Eagle v1) and Qwen2 (Eagle2.5) decoders, unquantized.

The format `trtllm-build --checkpoint_dir` reads (TensorRT-LLM docs/source/architecture/checkpoint.md):
`config.json` plus `rank0.safetensors`, linear weights stored (out, in). Names follow TensorRT-LLM's
Llama/Qwen converters and nvidia-modelopt's `export_tensorrt_llm_checkpoint`, which the quantized
checkpoints come from: `mlp.fc` is the activated branch (HF `gate_proj`), `mlp.gate` the multiplier
(HF `up_proj`), as TensorRT-LLM's GatedMLP computes proj(act(fc(x)) * gate(x)).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from runtime.errors import CheckpointError

from models.tensor_file import Pending, write_safetensors

CONFIG = "config.json"
WEIGHTS = "rank0.safetensors"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def decoder_architecture(decoder: nn.Module) -> str:
    """The TensorRT-LLM architecture that runs this Hugging Face decoder."""
    if getattr(decoder, "routes_by_modality", False):  # EVEv2: a Qwen2 subclass with a second weight set per layer
        raise CheckpointError("no TensorRT-LLM checkpoint for EVEv2: TensorRT-LLM cannot route each position to the "
                              "text or the image copy of a layer's weights")
    if isinstance(decoder, Qwen2ForCausalLM):
        return "Qwen2ForCausalLM"
    if isinstance(decoder, LlamaForCausalLM):  # EVE's EVELlamaForCausalLM is one
        return "LlamaForCausalLM"
    raise CheckpointError(f"no TensorRT-LLM checkpoint writer for a {type(decoder).__name__} decoder; "
                          "Aerie writes Llama and Qwen2 decoders")


def rope_fields(config) -> dict:
    """rotary_base and rotary_scaling from transformers 5's `rope_parameters` (older configs: rope_theta)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    base = params.pop("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope_type = params.get("rope_type", "default")
    return {"rotary_base": float(base), "rotary_scaling": None if rope_type == "default" else params}


def trtllm_config(decoder: nn.Module, dtype: str, quantization: dict | None = None) -> dict:
    """config.json of the checkpoint; `quantization` is the quantized writers' block (quant_algo, ...)."""
    if dtype not in DTYPES:
        raise CheckpointError(f"TensorRT-LLM checkpoint dtype {dtype!r} is not one of {sorted(DTYPES)}")
    c = decoder.config
    architecture = decoder_architecture(decoder)
    head_size = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    config = {
        "producer": {"name": "aerie", "version": "0.1.0"},
        "architecture": architecture,
        "dtype": dtype,
        "logits_dtype": "float32",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads or c.num_attention_heads,
        "head_size": head_size,
        "intermediate_size": c.intermediate_size,
        "hidden_act": c.hidden_act,
        "norm_epsilon": c.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        **rope_fields(c),
        "max_position_embeddings": c.max_position_embeddings,
        "attn_bias": architecture == "Qwen2ForCausalLM",
        "mlp_bias": False,
        "tie_word_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
        "share_embedding_table": False,  # lm_head.weight is always written, tied or not
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": quantization or {"quant_algo": None, "kv_cache_quant_algo": None},
    }
    if architecture == "Qwen2ForCausalLM":
        config["qwen_type"] = "qwen2"
    return config


def cast(dtype: torch.dtype, *parts: torch.Tensor) -> Pending:
    """The parts (concatenated along the rows) in `dtype`, made when written: a 7B model is never copied whole."""
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    return Pending(dtype, shape, lambda: torch.cat([p.detach() for p in parts]).to(dtype))


def checkpoint_tensors(decoder: nn.Module, dtype: str, linears: bool = True) -> dict[str, Pending]:
    """Every tensor of rank0.safetensors under TensorRT-LLM's names, cast to `dtype`; without `linears`, only
    the tensors quantization leaves as they are (embeddings, norms, lm_head, biases)."""
    decoder_architecture(decoder)
    to = DTYPES[dtype]
    body = decoder.model
    out = {"transformer.vocab_embedding.weight": cast(to, body.embed_tokens.weight)}
    for i, layer in enumerate(body.layers):
        p = f"transformer.layers.{i}."
        attn, mlp = layer.self_attn, layer.mlp
        if linears:
            out[p + "attention.qkv.weight"] = cast(to, attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight)
            if attn.q_proj.bias is not None:
                out[p + "attention.qkv.bias"] = cast(to, attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias)
            out[p + "attention.dense.weight"] = cast(to, attn.o_proj.weight)
            out[p + "mlp.fc.weight"] = cast(to, mlp.gate_proj.weight)
            out[p + "mlp.gate.weight"] = cast(to, mlp.up_proj.weight)
            out[p + "mlp.proj.weight"] = cast(to, mlp.down_proj.weight)
        out[p + "input_layernorm.weight"] = cast(to, layer.input_layernorm.weight)
        out[p + "post_layernorm.weight"] = cast(to, layer.post_attention_layernorm.weight)
    out["transformer.ln_f.weight"] = cast(to, body.norm.weight)
    out["lm_head.weight"] = cast(to, decoder.lm_head.weight)
    return out


def write_trtllm_checkpoint(decoder: nn.Module, out_dir: str | Path, dtype: str = "float16") -> Path:
    """Write config.json + rank0.safetensors of `decoder` (model.decoder) into `out_dir`."""
    out_dir = Path(out_dir)
    config = trtllm_config(decoder, dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(out_dir / WEIGHTS, checkpoint_tensors(decoder, dtype), metadata={"format": "pt"})
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
