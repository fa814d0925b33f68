"""The layer-by-layer quantizer (FP8, INT4-AWQ, W4A8) on an image-aware calibration set, and every form written
from it: the TensorRT-LLM checkpoint checked against the documented format (config fields, quant_algo, names,
dtypes, shapes, the packed INT4 layout, scaling factors) and against the definitions of the arithmetic worked
out here from the model's own weights and activations; the fake-quant PyTorch decoder against an independent
reading of the checkpoint; the ONNX Runtime INT4 decoder holding the checkpoint's integers and computing what
the fake-quant decoder computes; the Hugging Face checkpoint with the same integers."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from conftest import make_tiny_checkpoint
from decoder_oracle import prompt_with_image
from export.trtllm import trtllm_config
from models.checkpoint import build_model, load_model, tied_keys
from models.engines import TorchDecoder
from models.tiny import tiny_eve_config
from quant.calibration import calibration_set
from quant.errors import QuantizationError
from quant.fake_quant import fake_quant_decoder
from quant.fp8 import FP8_MAX
from quant.hf import HF_QUANT_CONFIG, write_quantized_hf_checkpoint
from quant.int4 import awq_scale, dequantize_int4, fake_int4, int4_codes, pack_int4, unpack_int4
from quant.layerwise import causal_mask, quantize_decoder
from quant.modes import LM_HEADS, get_mode
from quant.ort_int4 import export_int4_decoder, round_to_nearest
from quant.trtllm import read_checkpoint, write_quantized_trtllm_checkpoint
from runtime.backends.ort_decoder import OrtDecoder
from runtime.tokenizer import Tokenizer
from test_trtllm_checkpoint import logits_from_checkpoint

CHECKPOINTS = {"eve": "tiny_eve_dir", "eagle2_5": "tiny_eagle25_dir", "eagle_v1": "tiny_eagle_v1_dir"}
GROUP = 128
# TensorRT-LLM linear -> Hugging Face projections, rows in order, and the module whose input they read
LINEARS = {"attention.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
           "attention.dense": ("self_attn.o_proj",), "mlp.fc": ("mlp.gate_proj",), "mlp.gate": ("mlp.up_proj",),
           "mlp.proj": ("mlp.down_proj",)}


@pytest.fixture(scope="module")
def tiny_eagle_v1_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_eagle_v1"), "eagle_v1")


@pytest.fixture(scope="module")
def calibration_data(tmp_path_factory):
    from runtime.eval.synthetic import generate

    out = generate(tmp_path_factory.mktemp("synthetic"), train=0, val=3, test=0, progress=False)
    return out / "val.json"


_QUANTIZED: dict[tuple[str, str], SimpleNamespace] = {}


def quantize(request, tmp_path_factory, calibration_data, family: str, mode: str) -> SimpleNamespace:
    """A tiny model's decoder quantized on three synthetic samples, and its TensorRT-LLM checkpoint (once per
    family and mode for the module)."""
    if (family, mode) not in _QUANTIZED:
        checkpoint = request.getfixturevalue(CHECKPOINTS[family])
        torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and the CI cores are shared
        model = load_model(checkpoint)
        calibration = calibration_set(model, Tokenizer.from_dir(checkpoint), calibration_data, num_samples=3,
                                      max_length=64, progress=False)
        quantized = quantize_decoder(model.decoder, get_mode(mode), calibration, progress=False)
        out = tmp_path_factory.mktemp(f"quant_{family}_{mode}")
        trt_dir = write_quantized_trtllm_checkpoint(model.decoder, quantized, out / "trtllm")
        config, tensors = read_checkpoint(trt_dir)
        _QUANTIZED[family, mode] = SimpleNamespace(family=family, mode=mode, checkpoint=checkpoint, model=model,
                                                   calibration=calibration, out=out, trt_dir=trt_dir, config=config,
                                                   tensors=tensors)
    return _QUANTIZED[family, mode]


@pytest.fixture(scope="module", params=["eve-fp8", "eve-int4_awq", "eagle2_5-fp8", "eagle2_5-int4_awq",
                                        "eagle_v1-int4_awq", "eagle2_5-w4a8_awq"])
def quantized(request, tmp_path_factory, calibration_data):
    return quantize(request, tmp_path_factory, calibration_data, *request.param.split("-"))


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def int4(request, tmp_path_factory, calibration_data):
    return quantize(request, tmp_path_factory, calibration_data, request.param, "int4_awq")


@pytest.fixture(scope="module", params=["eve", "eagle2_5"])
def fp8(request, tmp_path_factory, calibration_data):
    return quantize(request, tmp_path_factory, calibration_data, request.param, "fp8")


@torch.no_grad()
def linear_inputs(q) -> dict[tuple[int, str], torch.Tensor]:
    """What each Hugging Face projection reads on the calibration set, recorded in one forward pass of the whole
    decoder (Hugging Face's own loop, not the quantizer's layer-by-layer one): (layer, name) -> [tokens, in]."""
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}
    hooks = []
    for i, layer in enumerate(q.model.decoder.model.layers):
        for names in LINEARS.values():
            for name in names:
                hooks.append(layer.get_submodule(name).register_forward_pre_hook(
                    lambda m, args, key=(i, name): seen.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]))))
    try:
        for embeds in q.calibration.embeds:
            q.model.decoder(inputs_embeds=embeds)
    finally:
        for hook in hooks:
            hook.remove()
    return {k: torch.cat(v).float() for k, v in seen.items()}


def weights(q, layer: int, trt_name: str) -> torch.Tensor:
    block = q.model.decoder.model.layers[layer]
    return torch.cat([block.get_submodule(n).weight.detach().float() for n in LINEARS[trt_name]])


# --- TensorRT-LLM checkpoint: config --------------------------------------------------------------------


def test_quantization_block_names_the_algorithm(quantized):
    quant = quantized.config["quantization"]
    algo = {"fp8": "FP8", "int4_awq": "W4A16_AWQ", "w4a8_awq": "W4A8_AWQ"}[quantized.mode]
    if quantized.mode == "fp8":
        assert quant == {"quant_algo": "FP8", "kv_cache_quant_algo": None, "exclude_modules": ["lm_head"]}
    else:
        assert quant == {"quant_algo": algo, "kv_cache_quant_algo": None, "group_size": GROUP,
                         "has_zero_point": False, "pre_quant_scale": True, "exclude_modules": ["lm_head"]}


def test_model_fields_are_the_unquantized_writers(quantized):
    ours = trtllm_config(quantized.model.decoder, "float16")
    got = dict(quantized.config)
    assert got.pop("quantization")["quant_algo"] in ("FP8", "W4A16_AWQ", "W4A8_AWQ")
    ours.pop("quantization")
    assert got == ours
    assert got["rotary_base"] == (1e6 if quantized.family == "eagle2_5" else 1e4)


# --- TensorRT-LLM checkpoint: tensors -------------------------------------------------------------------


def test_names_dtypes_shapes(quantized):
    c = quantized.config
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_size"]
    half, f32 = torch.float16, torch.float32
    expected = {"transformer.vocab_embedding.weight": (half, (vocab, h)), "transformer.ln_f.weight": (half, (h,)),
                "lm_head.weight": (half, (vocab, h))}  # excluded: float
    shapes = {"attention.qkv": (h + 2 * kv, h), "attention.dense": (h, h), "mlp.fc": (inter, h),
              "mlp.gate": (inter, h), "mlp.proj": (h, inter)}
    for i in range(c["num_hidden_layers"]):
        p = f"transformer.layers.{i}."
        expected[p + "input_layernorm.weight"] = (half, (h,))
        expected[p + "post_layernorm.weight"] = (half, (h,))
        if c["attn_bias"]:
            expected[p + "attention.qkv.bias"] = (half, (h + 2 * kv,))
        for name, (out_features, in_features) in shapes.items():
            if quantized.mode == "fp8":
                expected[p + name + ".weight"] = (torch.float8_e4m3fn, (out_features, in_features))
                expected[p + name + ".weights_scaling_factor"] = (f32, (1,))
            else:
                expected[p + name + ".weight"] = (torch.int8, (out_features // 2, in_features))  # two rows a byte
                expected[p + name + ".weights_scaling_factor"] = (f32, (out_features, in_features // GROUP))
                expected[p + name + ".prequant_scaling_factor"] = (half, (in_features,))
            if quantized.mode != "int4_awq":
                expected[p + name + ".activation_scaling_factor"] = (f32, (1,))
            if quantized.mode == "w4a8_awq":
                expected[p + name + ".weights_scaling_factor_2"] = (f32, (1,))
    got = {k: (v.dtype, tuple(v.shape)) for k, v in quantized.tensors.items()}
    assert got == expected


def test_int4_packing_worked_by_hand():
    """Signed 4-bit values, two output rows a byte: row 2j in the low nibble, row 2j+1 in the high one."""
    codes = torch.tensor([[1, -1, 7], [2, -8, 0]], dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.int8 and packed.shape == (1, 3)
    assert packed.view(torch.uint8).tolist() == [[0x21, 0x8F, 0x07]]
    assert torch.equal(unpack_int4(packed), codes)
    every = torch.arange(-8, 8, dtype=torch.int8).repeat(4, 2)  # every value in every nibble position
    assert torch.equal(unpack_int4(pack_int4(every)), every)


def test_int4_codes_worked_by_hand():
    """scale = the group's absolute max / 7; codes = w / scale rounded (half to even, as torch.round) and clamped."""
    weight = torch.tensor([[7.0, -3.5, 0.25, 14.0], [0.0, 0.0, 0.0, 0.0]])
    codes, scales = int4_codes(weight, 2)
    torch.testing.assert_close(scales, torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    assert codes.tolist() == [[7, -4, 0, 7], [0, 0, 0, 0]]  # -3.5 rounds to -4 (half to even), 0.125 to 0
    torch.testing.assert_close(dequantize_int4(codes, scales), torch.tensor([[7.0, -4.0, 0.0, 14.0], [0.0] * 4]))


def test_fake_int4_is_the_codes_times_the_scales():
    weight = torch.randn(6, 256, generator=torch.Generator().manual_seed(1))
    weight[2, :128] = 0.0  # an all-zero group
    codes, scales = int4_codes(weight, 128)
    torch.testing.assert_close(fake_int4(weight, 128), dequantize_int4(codes, scales), rtol=0, atol=1e-7)


def test_awq_protects_the_channels_the_activations_load():
    """Activations with a few large channels: AWQ's scales give a smaller output error than plain rounding."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 256, generator=gen) * 0.02
    x = torch.randn(512, 256, generator=gen)
    x[:, :4] *= 30.0  # outlier channels, as LLM activations have
    s = awq_scale(weight, x, x.abs().mean(0), group=128)

    def error(scale: torch.Tensor) -> float:
        codes, scales = int4_codes(weight * scale, 128)
        return float(((x / scale) @ dequantize_int4(codes, scales).T - x @ weight.T).pow(2).mean())

    plain = error(torch.ones(256))
    assert error(s) < 0.7 * plain, (error(s), plain)
    assert s[:4].mean() > s[4:].mean(), "the loaded channels get the larger scales"


def test_int4_integers_and_scales_follow_the_definition(int4):
    """For each linear: w' = w * s with s = 1 / prequant_scaling_factor; scales = group amax(w') / 7;
    codes = round(w' / scales) within rounding of the float16 pre-quant scale; q/k/v and gate/up share s."""
    for i in range(int4.config["num_hidden_layers"]):
        for trt_name in LINEARS:
            key = f"transformer.layers.{i}.{trt_name}"
            pre = int4.tensors[key + ".prequant_scaling_factor"].float()
            scaled = weights(int4, i, trt_name) / pre
            codes, scales = unpack_int4(int4.tensors[key + ".weight"]), int4.tensors[key + ".weights_scaling_factor"]
            want_scales = scaled.reshape(scaled.shape[0], -1, GROUP).abs().amax(-1) / 7
            torch.testing.assert_close(scales, want_scales, rtol=2e-3, atol=1e-8)
            step = scales.repeat_interleave(GROUP, dim=1)
            assert ((codes.float() * step - scaled).abs() <= step * 0.5 + scaled.abs() * 2e-3 + 1e-8).all(), key
        p = f"transformer.layers.{i}.mlp."
        assert torch.equal(int4.tensors[p + "fc.prequant_scaling_factor"], int4.tensors[p + "gate.prequant_scaling_factor"])


def test_fp8_weights_and_scales_follow_the_definition(fp8):
    """weights_scaling_factor = the largest |w| of the linears a fused kernel runs together / 448 (q/k/v merged;
    gate and up); activation_scaling_factor = the largest |x| their input reaches on the calibration set / 448,
    x taken from a forward pass of the whole decoder; weight = fp8(w / scale)."""
    inputs = linear_inputs(fp8)
    for i in range(fp8.config["num_hidden_layers"]):
        for trt_name, names in LINEARS.items():
            key = f"transformer.layers.{i}.{trt_name}"
            together = ("mlp.fc", "mlp.gate") if trt_name in ("mlp.fc", "mlp.gate") else (trt_name,)
            w_amax = max(weights(fp8, i, t).abs().max() for t in together)
            torch.testing.assert_close(fp8.tensors[key + ".weights_scaling_factor"], (w_amax / FP8_MAX).reshape(1))
            x_amax = inputs[i, names[0]].abs().max()
            torch.testing.assert_close(fp8.tensors[key + ".activation_scaling_factor"], (x_amax / FP8_MAX).reshape(1),
                                       rtol=1e-4, atol=0)
            w = weights(fp8, i, trt_name)
            scale = fp8.tensors[key + ".weights_scaling_factor"]
            assert torch.equal(fp8.tensors[key + ".weight"].view(torch.uint8),
                               (w / scale).to(torch.float8_e4m3fn).view(torch.uint8)), key


def test_w4a8_scales_follow_the_definition(tmp_path_factory, calibration_data, request):
    """W4A8: the INT4 weight goes through FP8 with weights_scaling_factor_2 = its largest |value| / 448 (gate and
    up together); the FP8 activation scale covers x * prequant_scaling_factor."""
    q = quantize(request, tmp_path_factory, calibration_data, "eagle2_5", "w4a8_awq")
    inputs = linear_inputs(q)
    for i in range(q.config["num_hidden_layers"]):
        for trt_name, names in LINEARS.items():
            key = f"transformer.layers.{i}.{trt_name}"
            together = ("mlp.fc", "mlp.gate") if trt_name in ("mlp.fc", "mlp.gate") else (trt_name,)
            w_amax = max(dequantize_int4(unpack_int4(q.tensors[f"transformer.layers.{i}.{t}.weight"]),
                                         q.tensors[f"transformer.layers.{i}.{t}.weights_scaling_factor"]).abs().max()
                         for t in together)
            torch.testing.assert_close(q.tensors[key + ".weights_scaling_factor_2"], (w_amax / FP8_MAX).reshape(1))
            x = inputs[i, names[0]] * q.tensors[key + ".prequant_scaling_factor"].float()
            torch.testing.assert_close(q.tensors[key + ".activation_scaling_factor"],
                                       (x.abs().max() / FP8_MAX).reshape(1), rtol=2e-3, atol=0)


def dequantized(q) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as float weights computing the same products: for INT4, codes x scales with
    the pre-quant scale moved onto the weight's input columns."""
    tensors = {k: v.float() for k, v in q.tensors.items() if v.dtype != torch.int8}
    for i in range(q.config["num_hidden_layers"]):
        for trt_name in LINEARS:
            key = f"transformer.layers.{i}.{trt_name}"
            w = dequantize_int4(unpack_int4(q.tensors[key + ".weight"]), q.tensors[key + ".weights_scaling_factor"])
            tensors[key + ".weight"] = w * q.tensors[key + ".prequant_scaling_factor"].float()[None]
    return tensors


def test_int4_checkpoint_read_as_trtllm_reads_it_gives_the_fake_quant_logits(int4):
    """The fake-quant decoder (quant/fake_quant.py) against the checkpoint read by the meaning TensorRT-LLM gives
    each name (tests/test_trtllm_checkpoint.py): the same numbers but for the float16 of the float tensors, far
    closer than the quantization moved the logits from fp32."""
    ids = torch.tensor([1, 5, 17, 42, 7, 99, 3, 250, 11, 64])
    fake_decoder = fake_quant_decoder(int4.model.decoder, int4.trt_dir)
    with torch.no_grad():
        fake = fake_decoder(input_ids=ids[None]).logits[0]
        fp32 = int4.model.decoder(input_ids=ids[None]).logits[0]
    got = logits_from_checkpoint(int4.config, dequantized(int4), ids)
    err, quant_err = (got - fake).abs().max().item(), (fp32 - fake).abs().max().item()
    print(f"{int4.family}: checkpoint vs fake-quant {err:.2e}, fake-quant vs fp32 {quant_err:.2e}")
    assert err < 0.1 * quant_err


def test_kv_cache_fp8_adds_its_scales(tiny_eve_dir, calibration_data, tmp_path):
    torch.set_num_threads(1)
    model = load_model(tiny_eve_dir)
    calibration = calibration_set(model, Tokenizer.from_dir(tiny_eve_dir), calibration_data, num_samples=2,
                                  max_length=48, progress=False)
    quantized = quantize_decoder(model.decoder, get_mode("fp8"), calibration, kv_cache_fp8=True, progress=False)
    config, tensors = read_checkpoint(write_quantized_trtllm_checkpoint(model.decoder, quantized, tmp_path))
    assert config["quantization"]["kv_cache_quant_algo"] == "FP8"
    for i in range(config["num_hidden_layers"]):
        k, v, kv = (tensors[f"transformer.layers.{i}.attention.{n}_cache_scaling_factor"] for n in ("k", "v", "kv"))
        assert all(t.dtype == torch.float32 and t.shape == (1,) for t in (k, v, kv))
        # never below 1 (amax 448), TensorRT-LLM's recommended floor; kv covers both
        assert k.item() >= 1.0 and v.item() >= 1.0 and kv.item() == max(k.item(), v.item())


def test_widths_that_dont_fit_int4_groups_are_refused_naming_the_layer():
    model = build_model(tiny_eve_config(320, intermediate_size=192))  # down_proj's input: 192, not a multiple of 128
    with pytest.raises(QuantizationError, match=r"model\.layers\.0\.mlp\.down_proj: input width 192 is not a multiple of 128"):
        quantize_decoder(model.decoder, get_mode("int4_awq"), calibration=None)


def test_causal_mask_hides_the_future():
    mask = causal_mask(3)[0, 0]
    assert mask.shape == (3, 3) and (mask.diagonal() == 0).all()
    assert torch.isinf(mask[0, 1]) and mask[2, 0] == 0


# --- ONNX Runtime INT4 decoder --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ort_graph(int4):
    """The INT4 graph with fp32 dot products (accuracy_level 0), so its arithmetic is the checkpoint's."""
    engine_dir = int4.out / "ort"
    part = export_int4_decoder(int4.model.decoder, int4.trt_dir, engine_dir, max_length=48, accuracy_level=0)
    initializers = {t.name: numpy_helper.to_array(t, str(engine_dir / "decoder"))
                    for t in onnx.load(str(engine_dir / part["model"])).graph.initializer}
    return engine_dir, part, initializers


def matmulnbits_codes(packed: np.ndarray) -> np.ndarray:
    """MatMulNBits' uint8 [out, in/group, group/2], two inputs a byte (low nibble first), zero point 8 ->
    signed codes [out, in]."""
    low, high = packed & 0xF, packed >> 4
    return np.stack([low, high], axis=-1).reshape(packed.shape[0], -1).astype(np.int16) - 8


def test_ort_graph_holds_the_checkpoints_integers_and_scales(int4, ort_graph):
    _, _, init = ort_graph
    # ORT graph linear -> the TensorRT-LLM linears it merges
    merged = {"attn.qkv": ["attention.qkv"], "attn.o": ["attention.dense"], "mlp.gate_up": ["mlp.fc", "mlp.gate"],
              "mlp.down": ["mlp.proj"]}
    for i in range(int4.config["num_hidden_layers"]):
        for graph_name, trt_names in merged.items():
            keys = [f"transformer.layers.{i}.{name}" for name in trt_names]
            codes = torch.cat([unpack_int4(int4.tensors[k + ".weight"]) for k in keys])
            scales = torch.cat([int4.tensors[k + ".weights_scaling_factor"] for k in keys])
            got = matmulnbits_codes(init[f"layers.{i}.{graph_name}.qweight"])
            np.testing.assert_array_equal(got, codes.numpy().astype(np.int16), err_msg=f"layer {i} {graph_name}")
            np.testing.assert_array_equal(init[f"layers.{i}.{graph_name}.scales"].reshape(scales.shape), scales.numpy())


def test_ort_graph_puts_the_pre_quant_scales_where_they_belong(int4, ort_graph):
    """q/k/v's scale in the input norm, gate/up's in the post-attention norm, o's and down's on their input."""
    _, _, init = ort_graph
    t = int4.tensors
    for i, layer in enumerate(int4.model.decoder.model.layers):
        key = f"transformer.layers.{i}."
        norms = {"input_norm": (layer.input_layernorm, "attention.qkv"),
                 "post_attn_norm": (layer.post_attention_layernorm, "mlp.fc")}
        for graph_name, (norm, trt_name) in norms.items():
            expected = norm.weight.detach().float() * t[key + trt_name + ".prequant_scaling_factor"].float()
            np.testing.assert_allclose(init[f"layers.{i}.{graph_name}"], expected.numpy(), rtol=1e-6)
        for graph_name, trt_name in (("attn.o", "attention.dense"), ("mlp.down", "mlp.proj")):
            np.testing.assert_array_equal(init[f"layers.{i}.{graph_name}.pre_scale"],
                                          t[key + trt_name + ".prequant_scaling_factor"].float().numpy())


def test_ort_int4_decoder_computes_what_the_fake_quant_model_computes(int4, ort_graph):
    """Prefill with image rows, then four KV-cached steps: the ONNX Runtime INT4 engine against the
    fake-quant PyTorch decoder on the same inputs."""
    engine_dir, part, _ = ort_graph
    engine = OrtDecoder(engine_dir, part, threads=1)
    fake = TorchDecoder(fake_quant_decoder(int4.model.decoder, int4.trt_dir))
    fp32 = TorchDecoder(int4.model.decoder)
    ids, table = prompt_with_image(part["vocab_size"], part["hidden_size"])
    got, want, base = [engine.prefill(0, ids, table)], [fake.prefill(0, ids, table)], [fp32.prefill(0, ids, table)]
    for _ in range(4):
        token = np.array([int(want[-1].argmax())])
        got.append(engine.decode([0], token)[0])
        want.append(fake.decode([0], token)[0])
        base.append(fp32.decode([0], token)[0])
    err = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    quant_err = max(float(np.abs(b - w).max()) for b, w in zip(base, want))
    print(f"{int4.family}: ORT INT4 vs fake-quant {err:.2e} (fake-quant vs fp32 {quant_err:.2e})")
    assert err < 3e-3 and err < 0.1 * quant_err


def test_round_to_nearest_codes_worked_by_hand():
    """Blocks of 4: the absolute max maps to the largest code (127 at 8 bits, 7 at 4), the rest round to nearest;
    an all-zero block keeps codes at the zero point."""
    weight = torch.tensor([[1.0, -0.6, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]])
    for bits, top in ((8, 127), (4, 7)):
        linear = round_to_nearest(weight, bits, 4, accuracy_level=0)
        np.testing.assert_allclose(linear.scales, [[1 / top, 0.0]], rtol=1e-6)
        want = np.array([[1.0, round(-0.6 * top) / top, round(0.3 * top) / top, 0, 0, 0, 0, 0]], np.float32)
        np.testing.assert_allclose(linear.dequantized(), want, rtol=1e-6, atol=1e-7)
    assert round_to_nearest(weight, 8, 4, accuracy_level=0).packed.shape == (1, 2, 4)  # a code a byte
    assert round_to_nearest(weight, 4, 4, accuracy_level=0).packed.shape == (1, 2, 2)  # two codes a byte


@pytest.mark.parametrize("lm_head", ["int8", "int4"])
def test_quantized_lm_head_computes_its_rounded_weight(int4, lm_head, tmp_path):
    """The INT4 graph with the lm_head rounded to 8 or 4 bits against the fake-quant decoder holding that
    rounded lm_head: the same function; the rounding moves the logits less than the INT4 layers do."""
    part = export_int4_decoder(int4.model.decoder, int4.trt_dir, tmp_path, max_length=48, accuracy_level=0,
                               lm_head=lm_head)
    assert part["quantization"]["lm_head"] == lm_head and "lm_head" in part["quantization"]["modules"]
    nodes = onnx.load(str(tmp_path / part["model"]), load_external_data=False).graph.node
    head = next(n for n in nodes if n.name == "lm_head/MatMulNBits")
    assert next(a.i for a in head.attribute if a.name == "bits") == LM_HEADS[lm_head][0]
    fake = fake_quant_decoder(int4.model.decoder, int4.trt_dir)
    rounded = round_to_nearest(fake.lm_head.weight.detach(), *LM_HEADS[lm_head], accuracy_level=0)
    fake.lm_head = torch.nn.Linear(rounded.in_features, rounded.out_features, bias=False)  # untied: the table stays
    with torch.no_grad():
        fake.lm_head.weight.copy_(torch.from_numpy(rounded.dequantized()))
    engine, want = OrtDecoder(tmp_path, part, threads=1), TorchDecoder(fake)
    ids, table = prompt_with_image(part["vocab_size"], part["hidden_size"])
    got, expected = [engine.prefill(0, ids, table)], [want.prefill(0, ids, table)]
    for _ in range(3):
        token = np.array([int(expected[-1].argmax())])
        got.append(engine.decode([0], token)[0])
        expected.append(want.decode([0], token)[0])
    err = max(float(np.abs(g - w).max()) for g, w in zip(got, expected))
    print(f"{int4.family}: ORT INT4 + {lm_head} lm_head vs fake-quant with the rounded lm_head {err:.2e}")
    assert err < 3e-3


def test_quantized_engine_keeps_its_token_table_in_float16(int4, tmp_path):
    """An INT4 engine's token table is float16 (half of what was its largest file), and the runtime embeds each
    token as its row widened to float32, in front of the float32 graph."""
    part = export_int4_decoder(int4.model.decoder, int4.trt_dir, tmp_path, max_length=48, accuracy_level=0)
    table = np.load(tmp_path / part["embed_tokens"])
    weight = int4.model.decoder.get_input_embeddings().weight.detach().float().numpy()
    assert table.dtype == np.float16
    np.testing.assert_array_equal(table, weight.astype(np.float16))
    engine = OrtDecoder(tmp_path, part, threads=1)
    ids = np.array([1, 5, 7, 3])
    rows = np.empty((ids.size, part["hidden_size"]), np.float32)
    engine.embed(ids, None, rows)
    np.testing.assert_array_equal(rows, weight.astype(np.float16)[ids].astype(np.float32))


# --- Hugging Face checkpoint ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_checkpoint(quantized):
    out = write_quantized_hf_checkpoint(quantized.model, quantized.trt_dir, quantized.checkpoint, quantized.out / "hf")
    return out, json.loads((out / HF_QUANT_CONFIG).read_text()), json.loads((out / "config.json").read_text()), \
        load_file(str(out / "model.safetensors"))


def test_hf_checkpoint_is_the_whole_model_with_the_quantization_config(quantized, hf_checkpoint):
    out, quant_config, config, tensors = hf_checkpoint
    algo = {"fp8": "FP8", "int4_awq": "W4A16_AWQ", "w4a8_awq": "W4A8_AWQ"}[quantized.mode]
    assert quant_config["quantization"]["quant_algo"] == algo
    assert config["quantization_config"]["quant_method"] == "modelopt"
    assert config["quantization_config"]["quant_algo"] == algo
    assert config["model_type"] == {"eve": "eve", "eagle2_5": "eagle_2_5_vl", "eagle_v1": "eagle_llama"}[quantized.family]
    prefix = "language_model." if quantized.family == "eagle2_5" else ""
    vision = ("vision_model*", "mlp1*") if quantized.family == "eagle2_5" else ("model.vision_tower*", "model.mm_projector*")
    excluded = quant_config["quantization"]["exclude_modules"]
    assert excluded[:2] == [prefix + "lm_head", prefix + "model.embed_tokens"] and all(v in excluded for v in vision)
    assert (out / "tokenizer.json").is_file()
    tied = tied_keys(quantized.model)
    int4 = quantized.mode != "fp8"
    for name, value in quantized.model.state_dict().items():  # every float tensor is the source's, in float16
        if name in tied or (name.startswith(prefix + "model.layers.") and (
                "proj" in name or (int4 and ("input_layernorm" in name or "post_attention_layernorm" in name)))):
            continue
        assert torch.equal(tensors[name], value.half()), name


def test_hf_checkpoint_copies_no_weights_of_a_sharded_source(quantized, tmp_path):
    """A release's shards beside its other files: the tokenizer is copied, no source weight file is."""
    source = tmp_path / "sharded"
    shutil.copytree(quantized.checkpoint, source)
    for name in ("model-00001-of-00002.safetensors", "pytorch_model-00001-of-00002.bin", "consolidated.pth"):
        (source / name).write_bytes(b"not the quantized weights")
    out = write_quantized_hf_checkpoint(quantized.model, quantized.trt_dir, source, tmp_path / "hf")
    copied = {p.name for p in out.iterdir()}
    assert "tokenizer.json" in copied and "model.safetensors" in copied
    assert not copied & {"model-00001-of-00002.safetensors", "pytorch_model-00001-of-00002.bin", "consolidated.pth"}


def test_hf_checkpoint_holds_the_trtllm_checkpoints_integers(quantized, hf_checkpoint):
    _, _, _, tensors = hf_checkpoint
    prefix = "language_model." if quantized.family == "eagle2_5" else ""
    for i in range(quantized.config["num_hidden_layers"]):
        for trt_name, hf_names in LINEARS.items():
            trt = quantized.tensors[f"transformer.layers.{i}.{trt_name}.weight"]
            hf = torch.cat([tensors[f"{prefix}model.layers.{i}.{name}.weight"] for name in hf_names])
            if quantized.mode == "fp8":
                assert torch.equal(hf.view(torch.uint8), trt.view(torch.uint8)), f"layer {i} {trt_name}"
            else:
                assert hf.dtype == torch.uint8
                assert torch.equal(unpack_int4(hf.view(torch.int8)), unpack_int4(trt)), f"layer {i} {trt_name}"


def test_hf_checkpoint_folds_the_pre_quant_scales_as_modelopt_does(int4, tmp_path):
    """q/k/v's and gate/up's pre-quant scales multiply the norm before them; o_proj and down_proj keep theirs."""
    out = write_quantized_hf_checkpoint(int4.model, int4.trt_dir, int4.checkpoint, tmp_path / "hf")
    tensors = load_file(str(out / "model.safetensors"))
    prefix = "language_model." if int4.family == "eagle2_5" else ""
    for i, layer in enumerate(int4.model.decoder.model.layers):
        base, key = f"{prefix}model.layers.{i}.", f"transformer.layers.{i}."
        for norm, trt_name in (("input_layernorm", "attention.qkv"), ("post_attention_layernorm", "mlp.fc")):
            want = layer.get_submodule(norm).weight.float() * int4.tensors[key + trt_name + ".prequant_scaling_factor"].float()
            torch.testing.assert_close(tensors[base + norm + ".weight"].float(), want.half().float())
        for name, trt_name in (("self_attn.o_proj", "attention.dense"), ("mlp.down_proj", "mlp.proj")):
            assert torch.equal(tensors[base + name + ".pre_quant_scale"],
                               int4.tensors[key + trt_name + ".prequant_scaling_factor"])
        assert base + "self_attn.q_proj.pre_quant_scale" not in tensors
