"""The decoder quantized by nvidia-modelopt (FP8, INT4-AWQ) on an image-aware calibration set, and what is
written from it: the TensorRT-LLM checkpoint checked against the documented format (anchors.md §1.3:
config fields, quant_algo, tensor names, dtypes, shapes, the packed INT4 layout, scaling-factor shapes) and
against the quantizers' own state; the ONNX Runtime INT4 decoder holding the checkpoint's integers and
computing what the fake-quant model computes; the Hugging Face checkpoint with the same integers."""

from __future__ import annotations

import json
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
from models.tiny import tiny_eve_config
from quant.calibration import calibration_set
from quant.decoder import quantize_decoder
from quant.errors import QuantizationError
from quant.hf import HF_QUANT_CONFIG, write_quantized_hf_checkpoint
from quant.modes import get_mode
from quant.ort_int4 import export_int4_decoder
from quant.text_decoder import text_decoder
from quant.torch_engines import TorchDecoder
from quant.trtllm import pack_int4, read_checkpoint, unpack_int4, write_quantized_trtllm_checkpoint
from runtime.backends.ort_decoder import OrtDecoder
from runtime.tokenizer import Tokenizer
from test_trtllm_checkpoint import logits_from_checkpoint

CHECKPOINTS = {"eve": "tiny_eve_dir", "eagle2_5": "tiny_eagle25_dir", "eagle_v1": "tiny_eagle_v1_dir"}
GROUP = 128
# TensorRT-LLM linear -> Hugging Face projections, rows in order
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
        decoder = quantize_decoder(text_decoder(model), get_mode(mode), calibration, progress=False)
        out = tmp_path_factory.mktemp(f"quant_{family}_{mode}")
        trt_dir = write_quantized_trtllm_checkpoint(decoder, out / "trtllm")
        config, tensors = read_checkpoint(trt_dir)
        _QUANTIZED[family, mode] = SimpleNamespace(family=family, mode=mode, checkpoint=checkpoint, model=model,
                                                   decoder=decoder, out=out, trt_dir=trt_dir, config=config,
                                                   tensors=tensors)
    return _QUANTIZED[family, mode]


@pytest.fixture(scope="module", params=["eve-fp8", "eve-int4_awq", "eagle2_5-fp8", "eagle2_5-int4_awq", "eagle_v1-int4_awq"])
def quantized(request, tmp_path_factory, calibration_data):
    return quantize(request, tmp_path_factory, calibration_data, *request.param.split("-"))


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def int4(request, tmp_path_factory, calibration_data):
    return quantize(request, tmp_path_factory, calibration_data, request.param, "int4_awq")


@pytest.fixture(scope="module", params=["eve", "eagle2_5"])
def fp8(request, tmp_path_factory, calibration_data):
    return quantize(request, tmp_path_factory, calibration_data, request.param, "fp8")


def linear_modules(q, layer: int, trt_name: str) -> list:
    return [q.decoder.model.layers[layer].get_submodule(name) for name in LINEARS[trt_name]]


# --- TensorRT-LLM checkpoint: config --------------------------------------------------------------------


def test_quantization_block_names_the_algorithm(quantized):
    quant = quantized.config["quantization"]
    if quantized.mode == "fp8":
        assert quant == {"quant_algo": "FP8", "kv_cache_quant_algo": None, "exclude_modules": ["lm_head"]}
    else:
        assert quant == {"quant_algo": "W4A16_AWQ", "kv_cache_quant_algo": None, "group_size": GROUP,
                         "has_zero_point": False, "pre_quant_scale": True, "exclude_modules": ["lm_head"]}


def test_model_fields_are_the_unquantized_writers(quantized):
    """Same config as export/trtllm.py writes (rotary_base included, which modelopt 0.47 drops under
    transformers 5), only the quantization block added."""
    ours = trtllm_config(quantized.model.decoder, "float16")
    got = dict(quantized.config)
    assert got.pop("quantization")["quant_algo"] in ("FP8", "W4A16_AWQ")
    assert got.pop("producer")["quantizer"]["name"] == "modelopt"
    ours.pop("quantization"), ours.pop("producer")
    assert got == ours
    assert got["rotary_base"] == (1e6 if quantized.family == "eagle2_5" else 1e4)


# --- TensorRT-LLM checkpoint: tensors -------------------------------------------------------------------


def test_names_dtypes_shapes(quantized):
    c = quantized.config
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_size"]
    half = torch.float16
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
                expected[p + name + ".weights_scaling_factor"] = (torch.float32, (1,))
                expected[p + name + ".activation_scaling_factor"] = (torch.float32, (1,))
            else:
                expected[p + name + ".weight"] = (torch.int8, (out_features // 2, in_features))  # two rows a byte
                expected[p + name + ".weights_scaling_factor"] = (torch.float32, (out_features, in_features // GROUP))
                expected[p + name + ".prequant_scaling_factor"] = (half, (in_features,))
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


def test_int4_integers_and_scales_are_the_quantizers(int4):
    """The checkpoint's integers are round(w / scale) of the AWQ-scaled weights, scale = block amax / 7,
    and its pre-quant scale is the one the fake-quant model multiplies the activation by."""
    for i in range(int4.config["num_hidden_layers"]):
        for trt_name in LINEARS:
            modules = linear_modules(int4, i, trt_name)
            weight = torch.cat([m.weight.detach().float() for m in modules])
            amax = torch.cat([m.weight_quantizer.amax.float().reshape(m.out_features, -1) for m in modules])
            scale = amax / 7
            key = f"transformer.layers.{i}.{trt_name}"
            torch.testing.assert_close(int4.tensors[key + ".weights_scaling_factor"], scale)
            codes = (weight / scale.repeat_interleave(GROUP, dim=1)).round().clamp(-8, 7).to(torch.int8)
            assert torch.equal(unpack_int4(int4.tensors[key + ".weight"]), codes), key
            pre = modules[0].input_quantizer.pre_quant_scale.float()
            assert all(torch.equal(m.input_quantizer.pre_quant_scale, modules[0].input_quantizer.pre_quant_scale)
                       for m in modules)  # q/k/v (and gate/up, below) share their input scale
            torch.testing.assert_close(int4.tensors[key + ".prequant_scaling_factor"], pre.half())
        p = f"transformer.layers.{i}.mlp."
        assert torch.equal(int4.tensors[p + "fc.prequant_scaling_factor"], int4.tensors[p + "gate.prequant_scaling_factor"])


def test_fp8_weights_and_scales_are_the_quantizers(fp8):
    """w = weight * weights_scaling_factor equals the fake-quant weight; scales are amax / 448 (E4M3's max);
    linears that share an input share its activation scale."""
    for i in range(fp8.config["num_hidden_layers"]):
        for trt_name in LINEARS:
            modules = linear_modules(fp8, i, trt_name)
            key = f"transformer.layers.{i}.{trt_name}"
            w_scale = fp8.tensors[key + ".weights_scaling_factor"]
            a_scale = fp8.tensors[key + ".activation_scaling_factor"]
            for m in modules:
                torch.testing.assert_close(w_scale, m.weight_quantizer.amax.float().reshape(1) / 448)
                torch.testing.assert_close(a_scale, m.input_quantizer.amax.float().reshape(1) / 448)
            fake = torch.cat([m.weight_quantizer(m.weight.detach()).float() for m in modules])
            got = fp8.tensors[key + ".weight"].float() * w_scale
            # The fake-quant kernel and torch's float8 cast break a rare tie differently: one E4M3 step at most.
            same = torch.isclose(got, fake, rtol=0, atol=1e-7)
            assert same.float().mean() > 0.999, key
            assert ((got - fake).abs() <= fake.abs() / 8 + 1e-7).all(), key


def dequantized(q) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as float weights computing the same products: for INT4, codes x scales with
    the pre-quant scale moved onto the weight's input columns."""
    tensors = {k: v.float() for k, v in q.tensors.items() if v.dtype != torch.int8}
    for i in range(q.config["num_hidden_layers"]):
        for trt_name in LINEARS:
            key = f"transformer.layers.{i}.{trt_name}"
            codes = unpack_int4(q.tensors[key + ".weight"]).float()
            w = codes * q.tensors[key + ".weights_scaling_factor"].repeat_interleave(GROUP, dim=1)
            tensors[key + ".weight"] = w * q.tensors[key + ".prequant_scaling_factor"].float()[None]
    return tensors


def test_int4_checkpoint_read_as_trtllm_reads_it_gives_the_fake_quant_logits(int4):
    """The checkpoint read by the meaning TensorRT-LLM gives each name (tests/test_trtllm_checkpoint.py)
    computes what the fake-quant model computes, up to the float16 of its float tensors: far closer to it
    than the quantization moved it from fp32."""
    ids = torch.tensor([1, 5, 17, 42, 7, 99, 3, 250, 11, 64])
    with torch.no_grad():
        fake = int4.decoder(input_ids=ids[None]).logits[0]
        fp32 = int4.model.decoder(input_ids=ids[None]).logits[0]
    got = logits_from_checkpoint(int4.config, dequantized(int4), ids)
    err, quant_err = (got - fake).abs().max().item(), (fp32 - fake).abs().max().item()
    print(f"{int4.family}: checkpoint vs fake-quant {err:.2e}, fake-quant vs fp32 {quant_err:.2e}")
    assert err < 0.1 * quant_err


def test_fp8_kv_cache_adds_its_scales(tiny_eve_dir, calibration_data, tmp_path):
    torch.set_num_threads(1)
    model = load_model(tiny_eve_dir)
    calibration = calibration_set(model, Tokenizer.from_dir(tiny_eve_dir), calibration_data, num_samples=2,
                                  max_length=48, progress=False)
    decoder = quantize_decoder(text_decoder(model), get_mode("fp8"), calibration, kv_cache_fp8=True, progress=False)
    config, tensors = read_checkpoint(write_quantized_trtllm_checkpoint(decoder, tmp_path))
    assert config["quantization"]["kv_cache_quant_algo"] == "FP8"
    for i, layer in enumerate(decoder.model.layers):
        scale = tensors[f"transformer.layers.{i}.attention.kv_cache_scaling_factor"]
        assert scale.dtype == torch.float32 and scale.shape == (1,)
        # what the fake-quant model uses: the larger of the key and value ranges over E4M3's 448, and at
        # least 1 (modelopt's export clamps it there, and the quantizers were given the same floor)
        k, v = layer.self_attn.k_bmm_quantizer.amax.item(), layer.self_attn.v_bmm_quantizer.amax.item()
        assert scale.item() == pytest.approx(max(k, v) / 448, rel=1e-6) and scale.item() >= 1.0


def test_widths_that_dont_fit_int4_groups_are_refused_naming_the_layer(calibration_data):
    model = build_model(tiny_eve_config(320, intermediate_size=192))  # down_proj's input: 192, not a multiple of 128
    with pytest.raises(QuantizationError, match=r"model\.layers\.0\.mlp\.down_proj: input width 192 is not a multiple of 128"):
        quantize_decoder(text_decoder(model), get_mode("int4_awq"), calibration=None)


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
    fake = TorchDecoder(int4.decoder)
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


# --- Hugging Face checkpoint ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_checkpoint(quantized):
    out = write_quantized_hf_checkpoint(quantized.model, quantized.decoder, quantized.checkpoint, quantized.out / "hf")
    return out, json.loads((out / HF_QUANT_CONFIG).read_text()), json.loads((out / "config.json").read_text()), \
        load_file(str(out / "model.safetensors"))


def test_hf_checkpoint_is_the_whole_model_with_the_quantization_config(quantized, hf_checkpoint):
    out, quant_config, config, tensors = hf_checkpoint
    algo = {"fp8": "FP8", "int4_awq": "W4A16_AWQ"}[quantized.mode]
    assert quant_config["quantization"]["quant_algo"] == algo
    assert config["quantization_config"]["quant_method"] == "modelopt"
    assert config["model_type"] == {"eve": "eve", "eagle2_5": "eagle_2_5_vl", "eagle_v1": "eagle_llama"}[quantized.family]
    prefix = "language_model." if quantized.family == "eagle2_5" else ""
    vision = ("vision_model*", "mlp1*") if quantized.family == "eagle2_5" else ("model.vision_tower*", "model.mm_projector*")
    excluded = quant_config["quantization"]["exclude_modules"]
    assert prefix + "lm_head" in excluded and all(v in excluded for v in vision)
    assert (out / "tokenizer.json").is_file()
    tied = tied_keys(quantized.model)
    for name, value in quantized.model.state_dict().items():  # every float tensor is the source's, in float16
        if not name.startswith(prefix + "model.layers.") and name not in tied:
            assert torch.equal(tensors[name], value.half()), name


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
                assert torch.equal(unpack_int4(hf.view(torch.int8)), unpack_int4(trt)), f"layer {i} {trt_name}"
