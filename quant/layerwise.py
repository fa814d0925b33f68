"""Quantizing the decoder one layer at a time, on the calibration set's cached activations.

The calibration samples' `inputs_embeds` (image rows spliced in: quant/calibration.py) go through the layers in
turn. For each layer, only that layer's weights are made float32 (models/precision.py), one forward pass over
every sample records what its linears read — per input channel the mean and max of |x|, and a fixed subsample of
rows for AWQ's search — and its outputs become the next layer's inputs, computed with the float weights as AWQ
does. The scales are then searched and the weights quantized (quant/int4.py, quant/fp8.py) before the next layer.
Memory: one layer in float32 and the calibration activations; time: one forward pass of the model over the
calibration tokens, plus AWQ's grid on `search_tokens` rows per linear group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.checkpoint import release_pages
from models.precision import parameters_as
from runtime.eval.progress import Progress

from .calibration import CalibrationSet
from .errors import QuantizationError
from .fp8 import fp8_scale, to_fp8
from .int4 import awq_scale, dequantize_int4, int4_codes, pack_int4
from .modes import QuantMode, check_group_size
from .quantized import LINEARS, QuantizedDecoder, QuantizedLinear

# Linears that read one input, searched and scaled together: the module whose input is recorded, and the
# TensorRT-LLM linears the group becomes.
GROUPS = {
    "qkv": ("self_attn.q_proj", ("attention.qkv",)),
    "o": ("self_attn.o_proj", ("attention.dense",)),
    "gate_up": ("mlp.gate_proj", ("mlp.fc", "mlp.gate")),
    "down": ("mlp.down_proj", ("mlp.proj",)),
}
SEARCH_TOKENS = 512


def quantized_linears(decoder: nn.Module) -> dict[str, nn.Linear]:
    """The linears every mode quantizes, by Hugging Face module name: each projection of each layer (lm_head and
    the embeddings stay in the checkpoint's dtype)."""
    return {f"model.layers.{i}.{name}": layer.get_submodule(name)
            for i, layer in enumerate(decoder.model.layers) for names in LINEARS.values() for name in names}


def check_int4_widths(decoder: nn.Module, group_size: int) -> None:
    """INT4 weights come in groups of `group_size` along the input and two to a byte along the output: refuse,
    naming the layer, a width that doesn't fit (before any calibration time is spent)."""
    for name, linear in quantized_linears(decoder).items():
        if linear.in_features % group_size:
            raise QuantizationError(
                f"{name}: input width {linear.in_features} is not a multiple of {group_size}, the INT4 group size; "
                f"INT4-AWQ can't quantize this model (use --quant fp8, or a model whose linear inputs are multiples "
                f"of {group_size})")
        if linear.out_features % 2:
            raise QuantizationError(f"{name}: output width {linear.out_features} is odd; packed INT4 stores two "
                                    "output rows a byte (use --quant fp8)")


@dataclass
class InputStats:
    """What one linear group reads, over every calibration token: per channel sum and max of |x|, and the rows
    kept for the scale search."""

    abs_sum: torch.Tensor | None = None
    amax: torch.Tensor | None = None
    tokens: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor, keep: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        absolute = x.abs()
        if self.abs_sum is None:
            self.abs_sum, self.amax = absolute.sum(0, dtype=torch.float64), absolute.amax(0)
        else:
            self.abs_sum += absolute.sum(0, dtype=torch.float64)
            torch.maximum(self.amax, absolute.amax(0), out=self.amax)
        self.tokens += x.shape[0]
        if keep.numel():
            self.rows.append(x[keep])

    @property
    def mean(self) -> torch.Tensor:
        return (self.abs_sum / self.tokens).float()

    def samples(self) -> torch.Tensor:
        return torch.cat(self.rows)


def kept_rows(lengths: list[int], n: int) -> list[torch.Tensor]:
    """Per sample, the positions of `n` rows spread evenly over all the samples' tokens."""
    total = sum(lengths)
    chosen = torch.linspace(0, total - 1, min(n, total)).round().long().unique()
    starts = torch.tensor([0, *lengths]).cumsum(0)
    return [chosen[(chosen >= starts[i]) & (chosen < starts[i + 1])] - starts[i] for i in range(len(lengths))]


def causal_mask(length: int) -> torch.Tensor:
    """[1, 1, L, L] additive mask: each position sees itself and the ones before (eager and SDPA attention alike)."""
    return torch.full((length, length), float("-inf")).triu(1)[None, None]


def rotated_key_amax(keys: torch.Tensor, head_dim: int) -> torch.Tensor:
    """A bound on |k| after rotary embedding, from the keys before it: rotation mixes the two halves of each head,
    so no element exceeds the norm of its pair."""
    k = keys.float().reshape(*keys.shape[:-1], -1, 2, head_dim // 2)
    return k.pow(2).sum(-2).sqrt().amax()


def quantize_group(weights: list[list[torch.Tensor]], stats: InputStats, mode: QuantMode, group: int
                   ) -> list[QuantizedLinear]:
    """One input group (its TensorRT-LLM linears, each a list of Hugging Face weights [out, in] in float32)."""
    merged = [torch.cat(parts) for parts in weights]
    pre = None
    channel_amax = stats.amax
    if mode.int4:
        s = awq_scale(torch.cat(merged), stats.samples(), stats.mean, group)
        pre = 1.0 / s
        channel_amax = channel_amax * pre  # the activation the kernel quantizes is x * pre_quant_scale
    act_scale = fp8_scale(channel_amax.max()) if mode.fp8_activations else None
    if not mode.int4:
        w_scale = fp8_scale(max(w.abs().max() for w in merged))  # one scale for linears a fused kernel runs together
        return [QuantizedLinear(to_fp8(w, w_scale), w_scale, activation_scaling_factor=act_scale) for w in merged]
    coded = [int4_codes(w * s, group) for w in merged]
    w_scale_2 = None
    if mode.fp8_activations:  # W4A8: the dequantized INT4 weight goes through FP8 too
        w_scale_2 = fp8_scale(max(dequantize_int4(c, sc).abs().max() for c, sc in coded))
    return [QuantizedLinear(pack_int4(codes), scales, pre, act_scale, w_scale_2) for codes, scales in coded]


def quantize_layer(layer: nn.Module, stats: dict[str, InputStats], mode: QuantMode, group: int
                   ) -> dict[str, QuantizedLinear]:
    out: dict[str, QuantizedLinear] = {}
    for name, (_, trt_names) in GROUPS.items():
        weights = [[layer.get_submodule(hf).weight.detach().float() for hf in LINEARS[t]] for t in trt_names]
        for trt_name, linear in zip(trt_names, quantize_group(weights, stats[name], mode, group)):
            biases = [layer.get_submodule(hf).bias for hf in LINEARS[trt_name]]
            if any(b is not None for b in biases):
                linear.bias = torch.cat([b.detach().float() for b in biases])
            out[trt_name] = linear
    return out


def kv_cache_scales(k_amax: float, v_amax: float) -> dict[str, torch.Tensor]:
    """FP8 KV-cache scales, never below 1 (amax 448): TensorRT-LLM's recommended floor, as modelopt writes them."""
    k, v = fp8_scale(max(k_amax, 448.0)), fp8_scale(max(v_amax, 448.0))
    return {"k": k, "v": v, "kv": torch.maximum(k, v)}


@torch.no_grad()
def quantize_decoder(decoder: nn.Module, mode: QuantMode, calibration: CalibrationSet, group_size: int = 128,
                     kv_cache_fp8: bool = False, search_tokens: int = SEARCH_TOKENS,
                     progress: bool = True) -> QuantizedDecoder:
    """Quantize every linear of `decoder` (a Hugging Face Llama / Qwen2 causal LM, `model.decoder`) on the
    calibration set; the model itself is left as it was."""
    if mode.int4:
        check_group_size(group_size)
        check_int4_widths(decoder, group_size)
    body = decoder.model
    config = decoder.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    hidden = [e.float() for e in calibration.embeds]
    lengths = [h.shape[1] for h in hidden]
    keep = kept_rows(lengths, search_tokens)
    positions = [torch.arange(n)[None] for n in lengths]
    rotary = [body.rotary_emb(h, p) for h, p in zip(hidden, positions)]
    result = QuantizedDecoder(mode, group_size, kv_cache_scales=[] if kv_cache_fp8 else None)
    bar = Progress(len(body.layers), label="quantize layers", enabled=progress)
    for layer in body.layers:
        stats = {name: InputStats() for name in GROUPS}
        kv_amax = [0.0, 0.0]
        sample = [0]
        hooks = [layer.get_submodule(module).register_forward_pre_hook(
                     lambda m, args, name=name: stats[name].add(args[0], keep[sample[0]]))
                 for name, (module, _) in GROUPS.items()]
        hooks.append(layer.self_attn.k_proj.register_forward_hook(
            lambda m, args, out: kv_amax.__setitem__(0, max(kv_amax[0], float(rotated_key_amax(out, head_dim))))))
        hooks.append(layer.self_attn.v_proj.register_forward_hook(
            lambda m, args, out: kv_amax.__setitem__(1, max(kv_amax[1], float(out.abs().amax())))))
        outputs = []
        with parameters_as(layer.parameters(), torch.float32):
            try:
                for i, h in enumerate(hidden):
                    sample[0] = i
                    outputs.append(layer(h, attention_mask=causal_mask(lengths[i]), position_ids=positions[i],
                                         position_embeddings=rotary[i]))
            finally:
                for hook in hooks:
                    hook.remove()
            result.layers.append(quantize_layer(layer, stats, mode, group_size))
        release_pages(layer)  # done with its weights: a 7B checkpoint is not held whole by the end
        if kv_cache_fp8:
            result.kv_cache_scales.append(kv_cache_scales(*kv_amax))
        hidden = outputs
        bar.advance()
    bar.close()
    return result

