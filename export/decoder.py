"""The decoder (Llama for EVE / Eagle v1, Qwen2 for Eagle2.5) as one fused ONNX graph for ONNX Runtime,
emitted node by node from the weights (as onnxruntime-genai's model builder does), not traced from torch.

Per layer: SkipSimplifiedLayerNormalization (residual add + RMSNorm in one op), one MatMul for the
merged Q/K/V projection, GroupQueryAttention with rotary inside and the KV cache in a buffer of
`max_length` positions that past and present share (the runtime binds both to the same memory),
the output projection, then a merged gate/up MatMul, SiLU, multiply and the down projection. Only
the last position goes through the final norm and lm_head. Why emitted rather than traced: see
docs/engine-format.md ("Decoder").

Every linear goes through `emit_linear`, which writes a MatMul for float weights and a MatMulNBits
for 4- or 8-bit weights (`NBitsLinear`): the quantization step hands its weights in by module name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from models.checkpoint import release_pages
from runtime.errors import CheckpointError
from runtime.eval.progress import Progress

from .graph import MS_DOMAIN, GraphBuilder

DECODER_DIR = "decoder"
MODEL_FILE = "model.onnx"
EMBED_FILE = "embed_tokens.npy"
DTYPES = {"float32": np.float32, "float16": np.float16}
LONG_EXPORT_PARAMETERS = 100_000_000  # from here on the export shows a progress line per layer
STATIC_ROPE = {"default", "linear", "llama3", "yarn"}  # rope types whose tables don't depend on the length

# The graph's contract (docs/engine-format.md); written into the manifest so the runtime reads it from there.
IO_NAMES = {
    "inputs_embeds": "inputs_embeds",
    "seqlens_k": "seqlens_k",
    "total_sequence_length": "total_sequence_length",
    "past_key": "past_key_values.{layer}.key",
    "past_value": "past_key_values.{layer}.value",
    "logits": "logits",
    "present_key": "present.{layer}.key",
    "present_value": "present.{layer}.value",
}
# The graph's extra input for a decoder that routes positions by modality (EVEv2): bool [batch, sequence], True at
# image positions. Recorded in the manifest's `io` only for that family, so the runtime knows to feed it.
ROUTED_IO = {"visual_token_mask": "visual_token_mask"}


@dataclass(frozen=True)
class DecoderShape:
    """What the graph needs to know about a Hugging Face Llama / Qwen2 decoder."""

    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float


@dataclass(frozen=True)
class FloatLinear:
    """y = x @ weight.T + bias, weight [out, in] as Hugging Face stores it."""

    weight: np.ndarray
    bias: np.ndarray | None = None


@dataclass(frozen=True)
class NBitsLinear:
    """A 4- or 8-bit block-quantized linear in ONNX Runtime's MatMulNBits layout.

    4 bits: packed uint8 [out, in / block_size, block_size / 2], two values a byte, low nibble first; zero_points
    uint8 [out, ceil(in / block_size / 2)] packed the same way. 8 bits: packed [out, in / block_size, block_size],
    zero_points [out, in / block_size], a value a byte. scales: float [out, in / block_size]. No zero_points
    means the symmetric zero point 2^(bits - 1). w = (q - zero_point) * scale.
    """

    packed: np.ndarray
    scales: np.ndarray
    block_size: int
    in_features: int
    zero_points: np.ndarray | None = None
    bias: np.ndarray | None = None
    accuracy_level: int = 4  # int8 activations for the dot products: ORT's fast CPU path
    # Per-input-channel factor on the activation before the product (AWQ's pre-quant scale, where no
    # norm weight precedes the linear to fold it into): y = (x * pre_scale) @ w.T.
    pre_scale: np.ndarray | None = None
    bits: int = 4

    @property
    def out_features(self) -> int:
        return self.packed.shape[0]

    @classmethod
    def from_codes(cls, codes: np.ndarray, scales: np.ndarray, block_size: int, zero_points: np.ndarray | None = None,
                   bias: np.ndarray | None = None, accuracy_level: int = 4, bits: int = 4) -> "NBitsLinear":
        """From unpacked codes [out, in] (values 0..2^bits - 1), scales [out, in / block_size] and optional
        zero points [out, in / block_size] (values 0..2^bits - 1; None means 2^(bits - 1))."""
        if bits not in (4, 8):
            raise ValueError(f"MatMulNBits weights of {bits} bits: Aerie writes 4 or 8")
        out_features, in_features = codes.shape
        if in_features % block_size or block_size % 2:
            raise ValueError(f"in_features {in_features} must be a multiple of the (even) block size {block_size}")
        blocks = codes.astype(np.uint8).reshape(out_features, in_features // block_size, block_size)
        if zero_points is not None:
            zero_points = zero_points.astype(np.uint8)
            if bits == 4:
                zero_points = pack_nibbles(np.pad(zero_points, ((0, 0), (0, zero_points.shape[1] % 2))))
        packed = pack_nibbles(blocks) if bits == 4 else blocks
        return cls(packed, np.asarray(scales), block_size, in_features, zero_points, bias, accuracy_level, bits=bits)

    def dequantized(self) -> np.ndarray:
        """The float32 weight [out, in] the kernel computes with."""
        codes = self.packed if self.bits == 8 else np.stack([self.packed & 0xF, self.packed >> 4], axis=-1)
        codes = codes.reshape(self.out_features, -1, self.block_size).astype(np.float32)
        if self.zero_points is None:
            zero = np.float32(2 ** (self.bits - 1))
        else:
            zp = self.zero_points if self.bits == 8 else np.stack([self.zero_points & 0xF, self.zero_points >> 4], -1)
            zero = zp.reshape(self.out_features, -1)[:, : codes.shape[1], None].astype(np.float32)
        return ((codes - zero) * self.scales.astype(np.float32)[..., None]).reshape(self.out_features, self.in_features)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pairs along the last axis into bytes, the first of each pair in the low nibble."""
    return (values[..., 0::2] & 0xF) | ((values[..., 1::2] & 0xF) << 4)


Linear = FloatLinear | NBitsLinear


def decoder_shape(decoder: nn.Module) -> DecoderShape:
    """Read the decoder's config, refusing what the graph does not implement."""
    c = decoder.config
    arch = c.model_type
    if arch not in ("llama", "qwen2", "eve", "eagle_llama", "eve-qwen2"):
        raise CheckpointError(f"no ONNX decoder for model_type {arch!r}; Aerie exports Llama and Qwen2 decoders")
    if c.hidden_act != "silu":
        raise CheckpointError(f"decoder hidden_act {c.hidden_act!r} is not supported; the graph implements silu")
    rope_type = (getattr(c, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type not in STATIC_ROPE:
        raise CheckpointError(f"rope_type {rope_type!r} changes with the sequence length; supported: {sorted(STATIC_ROPE)}")
    if any(t != "full_attention" for t in getattr(c, "layer_types", None) or ()):
        raise CheckpointError("sliding-window attention layers are not supported by the ONNX decoder; "
                              "set use_sliding_window to false in config.json if the model was trained without it")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return DecoderShape(
        architecture="qwen2" if arch in ("qwen2", "eve-qwen2") else "llama",
        num_layers=c.num_hidden_layers, hidden_size=c.hidden_size, num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads or c.num_attention_heads, head_dim=head_dim,
        intermediate_size=c.intermediate_size, vocab_size=decoder.get_input_embeddings().num_embeddings,
        rms_norm_eps=float(c.rms_norm_eps),
    )


def float_linear(module: nn.Linear) -> FloatLinear:
    bias = None if module.bias is None else module.bias.detach().float().numpy()
    return FloatLinear(module.weight.detach().float().numpy(), bias)


def concat_linears(parts: list[Linear]) -> Linear:
    """One linear computing the outputs of `parts` side by side (merged QKV, merged gate/up)."""
    if len(parts) == 1:
        return parts[0]
    kinds = {type(p) for p in parts}
    if len(kinds) != 1:
        raise ValueError("a merged projection needs all its parts quantized the same way")
    biases = [p.bias for p in parts]
    if any(b is not None for b in biases):
        bias = np.concatenate([b if b is not None else np.zeros(p.out_features if isinstance(p, NBitsLinear)
                                                                 else p.weight.shape[0], np.float32)
                               for p, b in zip(parts, biases)])
    else:
        bias = None
    if isinstance(parts[0], FloatLinear):
        return FloatLinear(np.concatenate([p.weight for p in parts]), bias)
    first = parts[0]
    if any(p.block_size != first.block_size or p.in_features != first.in_features or p.bits != first.bits
           or (p.zero_points is None) != (first.zero_points is None) for p in parts):
        raise ValueError("merged quantized projections need the same bits, block size, input size and zero-point kind")
    if any((p.pre_scale is None) != (first.pre_scale is None)
           or (p.pre_scale is not None and not np.array_equal(p.pre_scale, first.pre_scale)) for p in parts):
        raise ValueError("merged quantized projections share their input, so they need the same pre_scale")
    zero_points = None if first.zero_points is None else np.concatenate([p.zero_points for p in parts])
    return replace(first, packed=np.concatenate([p.packed for p in parts]),
                   scales=np.concatenate([p.scales for p in parts]), zero_points=zero_points, bias=bias)


def emit_linear(g: GraphBuilder, x: str, linear: Linear, name: str, dtype: type) -> str:
    """MatMul (float weights) or MatMulNBits (4- or 8-bit weights), then the bias if any."""
    if isinstance(linear, FloatLinear):
        y = g.op("MatMul", [x, g.initializer(f"{name}.weight_t", linear.weight.T.astype(dtype))], name=f"{name}/MatMul")
    else:
        if linear.pre_scale is not None:
            x = g.op("Mul", [x, g.initializer(f"{name}.pre_scale", linear.pre_scale.astype(dtype))], name=f"{name}/pre_scale")
        inputs = [x, g.initializer(f"{name}.qweight", linear.packed.astype(np.uint8)),
                  g.initializer(f"{name}.scales", linear.scales.astype(dtype).reshape(-1))]
        if linear.zero_points is not None:
            inputs.append(g.initializer(f"{name}.qzeros", linear.zero_points.astype(np.uint8).reshape(-1)))
        y = g.op("MatMulNBits", inputs, domain=MS_DOMAIN, name=f"{name}/MatMulNBits",
                 K=linear.in_features, N=linear.out_features, bits=linear.bits, block_size=linear.block_size,
                 accuracy_level=linear.accuracy_level)
    if linear.bias is not None:
        y = g.op("Add", [y, g.initializer(f"{name}.bias", linear.bias.astype(dtype))], name=f"{name}/Add")
    return y


def rotary_tables(decoder: nn.Module, max_length: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [max_length, head_dim / 2] from the model's own rotary module (so every static rope
    scaling the model knows is honoured); GroupQueryAttention rotates the two halves (non-interleaved)."""
    positions = torch.arange(max_length)[None]
    cos, sin = decoder.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    half = head_dim // 2
    return cos[0, :, :half].float().numpy(), sin[0, :, :half].float().numpy()


def layer_linears(layer: nn.Module, prefix: str, quantized: Mapping[str, NBitsLinear],
                  side: str = "") -> dict[str, Linear]:
    """The layer's four projections after merging, each float or the quantized replacement by module name.
    side "moe_": EVEv2's image copies (`self_attn.moe_q_proj`, `moe_mlp.gate_proj`, ...)."""
    def get(path: str) -> Linear:
        module = layer.get_submodule(path)
        return quantized.get(f"{prefix}.{path}") or float_linear(module)

    attn, mlp = f"self_attn.{side}", f"{side}mlp."
    return {
        "qkv": concat_linears([get(f"{attn}q_proj"), get(f"{attn}k_proj"), get(f"{attn}v_proj")]),
        "o": get(f"{attn}o_proj"),
        "gate_up": concat_linears([get(f"{mlp}gate_proj"), get(f"{mlp}up_proj")]),
        "down": get(f"{mlp}down_proj"),
    }


def layers_with_progress(decoder: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    """The decoder's layers with their index, a progress line per layer written when the export is long (a 7B
    decoder's takes minutes; a small one's seconds, without). A layer's memory-mapped weights leave the resident
    memory once it is written."""
    layers = decoder.model.layers
    long = sum(p.numel() for p in decoder.parameters()) >= LONG_EXPORT_PARAMETERS
    bar = Progress(len(layers), label="export layers", enabled=long)
    for i, layer in enumerate(layers):
        yield i, layer
        release_pages(layer)
        bar.advance()
    bar.close()


def emit_mlp(g: GraphBuilder, x: str, lin: dict[str, Linear], p: str, intermediate_size: int, dtype: type) -> str:
    """down(silu(gate(x)) * up(x)) with gate and up in one MatMul."""
    gate, up = g.op("Split", [emit_linear(g, x, lin["gate_up"], f"{p}.mlp.gate_up", dtype),
                              g.initializer(f"{p}.mlp.split", np.array([intermediate_size] * 2, np.int64))],
                    outputs=2, name=f"{p}/mlp/split", axis=-1)
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], name=f"{p}/mlp/sigmoid")], name=f"{p}/mlp/silu")
    act = g.op("Mul", [silu, up], name=f"{p}/mlp/gated")
    return emit_linear(g, act, lin["down"], f"{p}.mlp.down", dtype)


class ModalityRoutes:
    """EVEv2's routing in the graph: rows [batch*seq, width] split by the `visual_token_mask` input into text and
    image rows (Compress), each side through its own weights, and put back in position order (Gather). A side
    with no rows (the image side of every decode step) runs its MatMuls on zero rows: no weight is read."""

    def __init__(self, g: GraphBuilder, mask: str):
        image = g.op("Reshape", [mask, g.initializer("route.flat", np.array([-1], np.int64))], name="route/image")
        text = g.op("Not", [image], name="route/text")
        axis = g.initializer("route.axis", np.array(0, np.int64))
        one = g.initializer("route.one", np.array(1, np.int64))
        image_i, text_i = (g.op("Cast", [m], name=f"route/{n}_i64", to=7)  # to int64
                           for m, n in ((image, "image"), (text, "text")))
        n_text = g.op("ReduceSum", [text_i], name="route/n_text", keepdims=0)
        # Where each position's row lands in Concat(text rows, image rows): its rank within its own side.
        text_rank = g.op("Sub", [g.op("CumSum", [text_i, axis], name="route/text_cumsum"), one], name="route/text_rank")
        image_rank = g.op("Add", [g.op("CumSum", [image_i, axis], name="route/image_cumsum"),
                                  g.op("Sub", [n_text, one], name="route/n_text_1")], name="route/image_rank")
        self.g, self.text, self.image = g, text, image
        self.order = g.op("Where", [image, image_rank, text_rank], name="route/order")

    def __call__(self, x: str, branch, name: str) -> str:
        """branch(rows, side) emits one side's computation ("" text, "moe_" image) on its rows."""
        g = self.g
        text = branch(g.op("Compress", [x, self.text], name=f"{name}/text_rows", axis=0), "")
        image = branch(g.op("Compress", [x, self.image], name=f"{name}/image_rows", axis=0), "moe_")
        both = g.op("Concat", [text, image], name=f"{name}/concat", axis=0)
        return g.op("Gather", [both, self.order], name=f"{name}/order", axis=0)


def build_decoder_graph(decoder: nn.Module, path: Path, dtype: type, max_length: int,
                        quantized: Mapping[str, NBitsLinear], norms: Mapping[str, np.ndarray]) -> list[Path]:
    s = decoder_shape(decoder)
    g = GraphBuilder(path, "aerie_decoder")
    io = IO_NAMES
    g.add_input(io["inputs_embeds"], dtype, ["batch", "sequence", s.hidden_size])
    if routes_by_modality(decoder):
        g.add_input(ROUTED_IO["visual_token_mask"], np.bool_, ["batch", "sequence"])
    g.add_input(io["seqlens_k"], np.int32, ["batch"])
    g.add_input(io["total_sequence_length"], np.int32, [])
    kv_shape = ["batch", s.num_kv_heads, "max_length", s.head_dim]
    for i in range(s.num_layers):
        g.add_input(io["past_key"].format(layer=i), dtype, kv_shape)
        g.add_input(io["past_value"].format(layer=i), dtype, kv_shape)

    cos, sin = rotary_tables(decoder, max_length, s.head_dim)
    cos_name, sin_name = g.initializer("cos_cache", cos.astype(dtype)), g.initializer("sin_cache", sin.astype(dtype))
    eps = s.rms_norm_eps

    def norm_weight(module_name: str, name: str) -> str:
        weight = norms.get(module_name)
        if weight is None:
            weight = decoder.get_submodule(module_name).weight.detach().float().numpy()
        return g.initializer(name, weight.astype(dtype))

    def attention(i: int, qkv: str) -> str:
        """GroupQueryAttention of layer i on its merged q/k/v [batch, seq, q + k + v], rotary and KV cache inside."""
        p = f"layers.{i}"
        return g.op("GroupQueryAttention",
                    [qkv, "", "", io["past_key"].format(layer=i), io["past_value"].format(layer=i),
                     io["seqlens_k"], io["total_sequence_length"], cos_name, sin_name],
                    outputs=[g.unique(f"{p}/attn/out"), io["present_key"].format(layer=i),
                             io["present_value"].format(layer=i)],
                    domain=MS_DOMAIN, name=f"{p}/attn", num_heads=s.num_heads, kv_num_heads=s.num_kv_heads,
                    do_rotary=1, rotary_interleaved=0)[0]

    # Only the last position's logits are needed (prefill's next token); skip lm_head for the rest.
    last = [g.initializer("last.starts", np.array([-1], np.int64)),
            g.initializer("last.ends", np.array([np.iinfo(np.int64).max], np.int64)),
            g.initializer("last.axes", np.array([1], np.int64))]
    if routes_by_modality(decoder):
        stream = emit_routed_layers(g, decoder, s, dtype, quantized, norm_weight, attention)
        final = g.op("RMSNormalization", [g.op("Slice", [stream, *last], name="last/hidden"),
                                          norm_weight("model.norm", "final_norm")],
                     name="final_norm", axis=-1, epsilon=eps, stash_type=1)
    else:
        hidden = io["inputs_embeds"]
        residual = hidden
        x = g.op("RMSNormalization", [hidden, norm_weight("model.layers.0.input_layernorm", "layers.0.input_norm")],
                 name="layers.0/input_norm", axis=-1, epsilon=eps, stash_type=1)
        for i, layer in layers_with_progress(decoder):
            p = f"layers.{i}"
            lin = layer_linears(layer, f"model.layers.{i}", quantized)
            if i > 0:
                x, residual = g.op("SkipSimplifiedLayerNormalization",
                                   [hidden, residual,
                                    norm_weight(f"model.layers.{i}.input_layernorm", f"{p}.input_norm")],
                                   outputs=[g.unique(f"{p}/input_norm/out"), "", "", g.unique(f"{p}/residual")],
                                   domain=MS_DOMAIN, name=f"{p}/input_norm", epsilon=eps)[::3]
            attn = attention(i, emit_linear(g, x, lin["qkv"], f"{p}.attn.qkv", dtype))
            attn_out = emit_linear(g, attn, lin["o"], f"{p}.attn.o", dtype)
            x, residual = g.op("SkipSimplifiedLayerNormalization",
                               [attn_out, residual,
                                norm_weight(f"model.layers.{i}.post_attention_layernorm", f"{p}.post_attn_norm")],
                               outputs=[g.unique(f"{p}/post_attn_norm/out"), "", "", g.unique(f"{p}/residual_attn")],
                               domain=MS_DOMAIN, name=f"{p}/post_attn_norm", epsilon=eps)[::3]
            hidden = emit_mlp(g, x, lin, p, s.intermediate_size, dtype)
        hidden_last = g.op("Slice", [hidden, *last], name="last/hidden")
        residual_last = g.op("Slice", [residual, *last], name="last/residual")
        final = g.op("SkipSimplifiedLayerNormalization",
                     [hidden_last, residual_last, norm_weight("model.norm", "final_norm")],
                     outputs=1, domain=MS_DOMAIN, name="final_norm", epsilon=eps)
    lm_head = quantized.get("lm_head") or float_linear(decoder.get_output_embeddings())
    logits = emit_linear(g, final, lm_head, "lm_head", dtype)
    if dtype != np.float32:
        logits = g.op("Cast", [logits], name="logits/cast", to=1)
    g.op("Identity", [logits], outputs=[io["logits"]], name="logits")
    g.add_output(io["logits"], np.float32, ["batch", 1, s.vocab_size])
    for i in range(s.num_layers):
        g.add_output(io["present_key"].format(layer=i), dtype, kv_shape)
        g.add_output(io["present_value"].format(layer=i), dtype, kv_shape)
    return g.save()


def routes_by_modality(decoder: nn.Module) -> bool:
    """EVEv2: every layer holds image copies of its norms, attention projections and MLP (models/evev2.py)."""
    return bool(getattr(decoder, "routes_by_modality", False))


def emit_routed_layers(g: GraphBuilder, decoder: nn.Module, s: DecoderShape, dtype: type,
                       quantized: Mapping[str, NBitsLinear], norm_weight, attention) -> str:
    """EVEv2's layers on rows [batch*seq, hidden]: each row-wise block (norm + q/k/v, o, norm + MLP) runs per
    modality (ModalityRoutes); attention runs over all positions at once. Returns the residual stream
    [batch, seq, hidden] after the last layer."""
    io, eps = IO_NAMES, s.rms_norm_eps
    routes = ModalityRoutes(g, ROUTED_IO["visual_token_mask"])
    batch_seq = g.op("Shape", [io["inputs_embeds"]], name="route/batch_seq", start=0, end=2)

    def to_positions(rows: str, width: int, name: str) -> str:
        shape = g.op("Concat", [batch_seq, g.initializer(f"{name}.width", np.array([width], np.int64))],
                     name=f"{name}/shape", axis=0)
        return g.op("Reshape", [rows, shape], name=f"{name}/positions")

    def to_rows(x: str, width: int, name: str) -> str:
        return g.op("Reshape", [x, g.initializer(f"{name}.rows", np.array([-1, width], np.int64))], name=f"{name}/rows")

    def rms_norm(x: str, module_name: str, name: str) -> str:
        return g.op("RMSNormalization", [x, norm_weight(module_name, name)], name=name, axis=-1, epsilon=eps,
                    stash_type=1)

    stream = to_rows(io["inputs_embeds"], s.hidden_size, "inputs_embeds")
    qkv_width = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
    for i, layer in layers_with_progress(decoder):
        p, m = f"layers.{i}", f"model.layers.{i}"
        lin = {side: layer_linears(layer, m, quantized, side) for side in ("", "moe_")}

        def qkv(rows: str, side: str) -> str:
            x = rms_norm(rows, f"{m}.{side}input_layernorm", f"{p}.{side}input_norm")
            return emit_linear(g, x, lin[side]["qkv"], f"{p}.attn.{side}qkv", dtype)

        def out(rows: str, side: str) -> str:
            return emit_linear(g, rows, lin[side]["o"], f"{p}.attn.{side}o", dtype)

        def mlp(rows: str, side: str) -> str:
            x = rms_norm(rows, f"{m}.{side}post_attention_layernorm", f"{p}.{side}post_attn_norm")
            return emit_mlp(g, x, lin[side], f"{p}.moe" if side else p, s.intermediate_size, dtype)

        attn = attention(i, to_positions(routes(stream, qkv, f"{p}/qkv"), qkv_width, f"{p}.qkv"))
        attn_out = routes(to_rows(attn, s.num_heads * s.head_dim, f"{p}.attn"), out, f"{p}/o")
        stream = g.op("Add", [stream, attn_out], name=f"{p}/residual_attn")
        stream = g.op("Add", [stream, routes(stream, mlp, f"{p}/mlp")], name=f"{p}/residual")
    return to_positions(stream, s.hidden_size, "stream")


@torch.no_grad()
def export_decoder(decoder: nn.Module, engine_dir: str | Path, dtype: str = "float32", max_length: int | None = None,
                   quantized: Mapping[str, NBitsLinear] | None = None, norms: Mapping[str, np.ndarray] | None = None
                   ) -> dict:
    """Write `decoder/model.onnx` (+ `.data`) and `embed_tokens.npy` under `engine_dir`.

    Returns the manifest's decoder part: files (relative to engine_dir), dtype, I/O names and shapes.
    `quantized` maps Hugging Face module names ("model.layers.0.self_attn.q_proj", "lm_head") to 4- or 8-bit
    replacements; every other linear stays float. `norms` replaces norm weights by module name
    ("model.layers.0.input_layernorm": AWQ's pre-quant scales folded in). Weights are read one at a time in
    float32 from whatever dtype the model stores them in.
    """
    if dtype not in DTYPES:
        raise ValueError(f"decoder dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    np_dtype = DTYPES[dtype]
    s = decoder_shape(decoder)
    max_length = int(max_length or decoder.config.max_position_embeddings)
    engine_dir = Path(engine_dir)
    quantized = quantized if quantized is not None else {}
    files = build_decoder_graph(decoder, engine_dir / DECODER_DIR / MODEL_FILE, np_dtype, max_length, quantized,
                                norms or {})
    embed_path = engine_dir / EMBED_FILE
    # A quantized graph's token table is kept in float16: the runtime reads one row per token (no decode time),
    # and the table is the largest file of an INT4 engine (Qwen2.5's 151936 rows: 545 MB in float32 at 0.5B).
    table_dtype = np.float16 if quantized else np_dtype
    np.save(embed_path, decoder.get_input_embeddings().weight.detach().to(torch.float32).numpy().astype(table_dtype, copy=False))
    return {
        "backend": "ort",
        "files": [f.relative_to(engine_dir).as_posix() for f in (*files, embed_path)],
        "model": f"{DECODER_DIR}/{MODEL_FILE}",
        "embed_tokens": EMBED_FILE,
        "dtype": dtype,
        "quantization": {"linear": "int4", "modules": sorted(quantized)} if quantized else None,
        "architecture": s.architecture,
        "num_layers": s.num_layers,
        "num_heads": s.num_heads,
        "num_kv_heads": s.num_kv_heads,
        "head_dim": s.head_dim,
        "hidden_size": s.hidden_size,
        "vocab_size": s.vocab_size,
        "max_length": max_length,
        "kv_layout": "batch, kv_heads, max_length, head_dim",
        "io": {**IO_NAMES, **(ROUTED_IO if routes_by_modality(decoder) else {})},
    }
