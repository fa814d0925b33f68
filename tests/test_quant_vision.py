"""The vision graph with FP8 / INT8 Q/DQ nodes (nvidia-modelopt's ONNX PTQ, calibrated on images): the nodes
are there with the right types, ONNX Runtime runs the graph on the CPU (optimization BASIC) close to the
float graph, and TensorRT-RTX builds an FP8 / INT8 engine from it with no GPU. And the CPU engine's own INT8
vision graph (ONNX Runtime's integer MatMuls), close to the float graph on images it never saw."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from models.checkpoint import load_model
from quant.errors import QuantizationError
from quant.vision import QdqVisionEngine, qdq_counts, quantize_vision_graph, quantize_vision_int8_cpu
from runtime.backends.ort_vision import OrtVisionEngine
from runtime.manifest import file_sha256, read_manifest
from runtime.preprocess import preprocess_image
from tiny_engines import built_engine

FAMILIES = ("eve", "eagle2_5")
TYPES = {"fp8": "float8e4m3fn", "int8": "int8"}
# relative error of the embeddings against the float graph, on random tiny weights
TOLERANCE = {"fp8": 0.25, "int8": 0.1}


def images(spec, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = rng.integers(40, 220, 2)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append(preprocess_image(Image.fromarray(pixels), spec).trimmed())
    return out


@pytest.fixture(scope="module", params=[f"{f}-{m}" for f in FAMILIES for m in TYPES])
def quantized_graph(request, tmp_path_factory):
    """The vision graph of the session's tiny engine (tests/tiny_engines.py), quantized on four images."""
    family, mode = request.param.split("-")
    checkpoint, engine, _ = built_engine(family, tmp_path_factory)
    spec = load_model(checkpoint).preprocess_spec()
    source = engine / "vision" / "model.onnx"
    out = tmp_path_factory.mktemp(f"vision_{family}_{mode}")
    files = quantize_vision_graph(source, out / "model.onnx", mode, images(spec, 4, 0))
    return mode, spec, source, out, files


def test_qdq_nodes_of_the_mode(quantized_graph):
    mode, _, _, out, files = quantized_graph
    assert files[0] == out / "model.onnx"
    counts = qdq_counts(files[0])
    assert counts.get(TYPES[mode], 0) >= 6 and set(counts) == {TYPES[mode]}


def test_onnx_runtime_runs_it_close_to_the_float_graph(quantized_graph):
    mode, spec, source, _, files = quantized_graph
    qdq = QdqVisionEngine(files[0], threads=1)
    reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    name = reference.get_inputs()[0].name
    for pixels in images(spec, 3, seed=1):  # not the calibration images
        want = reference.run(None, {name: pixels.astype(np.float32)})[0].reshape(-1, qdq.encode(pixels).shape[-1])
        got = qdq.encode(pixels)
        assert got.shape == want.shape and got.dtype == np.float32
        error = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert 0 < error < TOLERANCE[mode], error


def test_tensorrt_rtx_builds_a_quantized_engine_from_it(quantized_graph, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX wheels are not installed")
    from engines.tensorrt import build_engine

    mode, spec, _, _, files = quantized_graph
    sidecar = build_engine(files[0], tmp_path, spec, compute_capability="SM89")
    assert sidecar["precision"] == mode


def test_refuses_an_unknown_mode_and_no_images(tmp_path):
    with pytest.raises(QuantizationError, match="choose one of fp8, int8"):
        quantize_vision_graph(tmp_path / "model.onnx", tmp_path / "q.onnx", "int4", [np.zeros((1, 3, 4, 4))])
    with pytest.raises(QuantizationError, match="at least one image"):
        quantize_vision_graph(tmp_path / "model.onnx", tmp_path / "q.onnx", "fp8", [])


def test_the_source_graph_is_left_as_it_was(quantized_graph):
    """modelopt rewrites the graph it is given (shape inference): the engine's own graph must keep its bytes."""
    _, _, source, _, _ = quantized_graph
    engine = source.parent.parent
    assert read_manifest(engine).files["vision/model.onnx"]["sha256"] == file_sha256(source)


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_graph_for_the_cpu_runs_close_to_the_float_graph(family, tmp_path_factory, tmp_path):
    """The weight MatMuls become MatMulInteger over activations quantized per call (no calibration), and ONNX
    Runtime's integer kernels give rows close to the float graph's on random images."""
    checkpoint, engine, _ = built_engine(family, tmp_path_factory)
    spec = load_model(checkpoint).preprocess_spec()
    source = engine / "vision" / "model.onnx"
    files = quantize_vision_int8_cpu(source, tmp_path / "model.onnx")
    assert files[0] == tmp_path / "model.onnx"
    ops = Counter(node.op_type for node in onnx.load(str(files[0]), load_external_data=False).graph.node)
    assert ops["MatMulInteger"] >= 2 and ops["DynamicQuantizeLinear"] >= 1, ops
    int8, reference = OrtVisionEngine(files[0], threads=1), OrtVisionEngine(source, threads=1)
    for pixels in images(spec, 3, seed=1):
        want, got = reference.encode(pixels), int8.encode(pixels)
        error = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert got.shape == want.shape and 0 < error < TOLERANCE["int8"], error
