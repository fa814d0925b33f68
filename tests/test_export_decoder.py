"""The emitted ONNX decoder computes what the PyTorch decoder computes (fp32 within 1e-4, with image rows
and several KV-cached steps), is a valid ONNX file ONNX Runtime 1.31 loads, and takes 4-bit linears."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from decoder_oracle import prompt_with_image, torch_greedy_logits
from export.decoder import NBitsLinear, export_decoder
from models.checkpoint import load_model
from runtime.errors import CheckpointError

MAX_LENGTH = 48


def run_graph(model_path, spec: dict, embeds_per_step: list[np.ndarray], ids_per_step: list | None = None
              ) -> list[np.ndarray]:
    """Run the graph with plain numpy feeds (no IO binding): the graph contract on its own. A graph that routes
    by modality also gets its mask, True where the step's ids address the image table."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    io = spec["io"]
    kv_shape = (1, spec["num_kv_heads"], spec["max_length"], spec["head_dim"])
    past = {io[kind].format(layer=i): np.zeros(kv_shape, np.float32)
            for i in range(spec["num_layers"]) for kind in ("past_key", "past_value")}
    output_names = [o.name for o in session.get_outputs()]
    length, logits = 0, []
    for step, embeds in enumerate(embeds_per_step):
        length += embeds.shape[1]
        feeds = {io["inputs_embeds"]: embeds, io["seqlens_k"]: np.array([length - 1], np.int32),
                 io["total_sequence_length"]: np.array(length, np.int32), **past}
        if "visual_token_mask" in io:
            feeds[io["visual_token_mask"]] = np.asarray(ids_per_step[step]).reshape(1, -1) >= spec["vocab_size"]
        outputs = dict(zip(output_names, session.run(None, feeds)))
        logits.append(outputs[io["logits"]][0, 0])
        for i in range(spec["num_layers"]):
            for past_kind, present_kind in (("past_key", "present_key"), ("past_value", "present_value")):
                past[io[past_kind].format(layer=i)] = outputs[io[present_kind].format(layer=i)]
    return logits


def embed(model, ids, table=None) -> np.ndarray:
    t = None if table is None else torch.from_numpy(table)
    with torch.no_grad():
        return model.embed(torch.from_numpy(np.asarray(ids, np.int64))[None], t).numpy()


def test_decoder_logits_match_torch(tiny_ort_checkpoint, tmp_path):
    model = load_model(tiny_ort_checkpoint)
    spec = export_decoder(model.decoder, tmp_path, max_length=MAX_LENGTH)
    ids, table = prompt_with_image(spec["vocab_size"], spec["hidden_size"])
    expected = torch_greedy_logits(model, ids, table, steps=4)
    step_ids = [ids] + [[int(e.argmax())] for e in expected[:-1]]
    got = run_graph(tmp_path / spec["model"], spec, [embed(model, i, table) for i in step_ids], step_ids)
    errors = [float(np.abs(g - e).max()) for g, e in zip(got, expected)]
    print(f"{model.family}: max abs error prefill {errors[0]:.2e}, decode steps {max(errors[1:]):.2e}")
    assert max(errors) < 1e-4


def test_decoder_graph_is_fused_valid_onnx(tiny_eagle25_dir, tmp_path):
    model = load_model(tiny_eagle25_dir)
    spec = export_decoder(model.decoder, tmp_path, max_length=MAX_LENGTH)
    path = tmp_path / spec["model"]
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False)
    assert graph.ir_version <= 13
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    layers = spec["num_layers"]
    assert ops["GroupQueryAttention"] == layers
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * layers
    assert ops["MatMul"] == 4 * layers + 1  # merged QKV and gate/up, o, down per layer; lm_head
    assert "Softmax" not in ops
    assert sorted(spec["files"]) == ["decoder/model.onnx", "decoder/model.onnx.data", "embed_tokens.npy"]
    embed_table = np.load(tmp_path / spec["embed_tokens"])
    assert embed_table.shape == (spec["vocab_size"], spec["hidden_size"])


def test_reexport_writes_the_data_file_afresh(tiny_eve_dir, tmp_path):
    model = load_model(tiny_eve_dir)
    spec = export_decoder(model.decoder, tmp_path, max_length=MAX_LENGTH)
    data = tmp_path / "decoder" / "model.onnx.data"
    size = data.stat().st_size
    export_decoder(model.decoder, tmp_path, max_length=MAX_LENGTH)
    assert data.stat().st_size == size  # onnx would append to an old data file; ours is rewritten
    ort.InferenceSession(str(tmp_path / spec["model"]), providers=["CPUExecutionProvider"])


def test_float16_decoder_is_close_to_float32(tiny_eve_dir, tmp_path):
    model = load_model(tiny_eve_dir)
    spec32 = export_decoder(model.decoder, tmp_path / "fp32", max_length=MAX_LENGTH)
    spec16 = export_decoder(model.decoder, tmp_path / "fp16", dtype="float16", max_length=MAX_LENGTH)
    assert np.load(tmp_path / "fp16" / spec16["embed_tokens"]).dtype == np.float16
    ids = np.arange(3, 20)
    session16 = ort.InferenceSession(str(tmp_path / "fp16" / spec16["model"]), providers=["CPUExecutionProvider"])
    assert session16.get_inputs()[0].type == "tensor(float16)"
    embeds = embed(model, ids)
    kv = (1, spec16["num_kv_heads"], MAX_LENGTH, spec16["head_dim"])
    feeds = {"seqlens_k": np.array([len(ids) - 1], np.int32), "total_sequence_length": np.array(len(ids), np.int32)}
    past = {name.format(layer=i): np.zeros(kv, np.float16) for i in range(spec16["num_layers"])
            for name in (spec16["io"]["past_key"], spec16["io"]["past_value"])}
    logits16 = session16.run(["logits"], {"inputs_embeds": embeds.astype(np.float16), **feeds, **past})[0]
    logits32 = run_graph(tmp_path / "fp32" / spec32["model"], spec32, [embeds])[0]
    assert logits16.dtype == np.float32
    assert np.abs(logits16[0, 0] - logits32).max() < 1e-2 * max(1.0, np.abs(logits32).max())


def rtn_int4(weight: np.ndarray, block_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric round-to-nearest 4-bit codes, scales, and the dequantized weight."""
    out_features, in_features = weight.shape
    blocks = weight.reshape(out_features, in_features // block_size, block_size)
    scales = np.abs(blocks).max(-1) / 7
    codes = (np.clip(np.round(blocks / scales[..., None]), -8, 7) + 8).astype(np.uint8)
    dequant = ((codes.astype(np.float32) - 8) * scales[..., None]).reshape(out_features, in_features)
    return codes.reshape(out_features, in_features), scales.astype(np.float32), dequant


def test_int4_linears_match_the_dequantized_model(tiny_eagle25_dir, tmp_path):
    """The seam for quantization: 4-bit weights handed in by module name become MatMulNBits, and the graph
    equals the PyTorch model holding the same weights dequantized (fp32 accumulation, accuracy_level 1)."""
    model = load_model(tiny_eagle25_dir)
    decoder = model.decoder
    quantized = {}
    with torch.no_grad():
        for i, layer in enumerate(decoder.model.layers):
            for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
                module = layer.get_submodule(name)
                codes, scales, dequant = rtn_int4(module.weight.numpy())
                bias = None if module.bias is None else module.bias.numpy()
                quantized[f"model.layers.{i}.{name}"] = NBitsLinear.from_codes(codes, scales, 32, bias=bias, accuracy_level=1)
                module.weight.copy_(torch.from_numpy(dequant))
    spec = export_decoder(decoder, tmp_path, max_length=MAX_LENGTH, quantized=quantized)
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / spec["model"]), load_external_data=False).graph.node)
    assert ops["MatMulNBits"] == 4 * spec["num_layers"] and ops["MatMul"] == 1
    assert spec["quantization"]["linear"] == "int4"
    ids, table = prompt_with_image(spec["vocab_size"], spec["hidden_size"], seed=1)
    expected = torch_greedy_logits(model, ids, table, steps=2)
    step_ids = [ids] + [[int(e.argmax())] for e in expected[:-1]]
    got = run_graph(tmp_path / spec["model"], spec, [embed(model, i, table) for i in step_ids], step_ids)
    assert max(float(np.abs(g - e).max()) for g, e in zip(got, expected)) < 1e-4


def test_unsupported_decoder_is_refused(tiny_eve_dir, tmp_path):
    model = load_model(tiny_eve_dir)
    model.config.hidden_act = "gelu"
    with pytest.raises(CheckpointError, match="hidden_act"):
        export_decoder(model.decoder, tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        export_decoder(model.decoder, tmp_path, dtype="bfloat16")
