"""Vision graphs: ONNX Runtime matches the PyTorch model within 1e-4 (fp32) for every family and image
shape, the graph takes only standard ops in versions ORT reads, and weights are written once and cleanly.

The fp32 graphs checked are the ones build.py wrote into the session's tiny engines (tiny_engines.py):
what users run, exported once for every test file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from engines.parity import compare, vision_parity
from models.engines import TorchVision
from export import onnx_utils
from export.vision import export_vision
from models.checkpoint import load_model
from runtime.backends.ort_vision import OrtVisionEngine
from runtime.manifest import read_manifest
from runtime.preprocess import preprocess_image
from tiny_engines import FAMILIES, built_engine

# Aspect ratios that give different token grids / tile counts, including a panorama.
SIZES = [(90, 50), (40, 100), (64, 64), (300, 20), (17, 23)]


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def family_graph(tmp_path_factory):
    """family -> (PyTorch model, the engine's vision graph path, its manifest part)."""
    done = {}

    def get(family):
        if family not in done:
            checkpoint, engine, _ = built_engine(family, tmp_path_factory)
            part = read_manifest(engine).parts["vision"]
            done[family] = load_model(checkpoint), engine / part["model"], part
        return done[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_matches_pytorch(family, family_graph):
    model, graph, _ = family_graph(family)
    engine = OrtVisionEngine(graph)
    spec = model.preprocess_spec()
    images = [preprocess_image(noise_image(size, i), spec) for i, size in enumerate(SIZES)]
    inputs = [image.trimmed() for image in images]
    if family not in ("eve", "evev2"):  # a batch of several images' tiles / squares in one call
        inputs.append(np.concatenate([image.pixel_values for image in images[:3]]))
    report = vision_parity(TorchVision(model), engine, inputs)
    print(f"\n{family}: {len(inputs)} inputs\n{report}")
    assert report.passed(atol=1e-4), report
    for image, diff in zip(images, report.diffs):
        assert diff.shape[0] == image.num_tokens


def test_eve_full_canvas_equals_trimmed(family_graph):
    """The crop is inside the graph: the padded canvas and the trimmed input give the same rows."""
    model, graph, _ = family_graph("eve")
    engine = OrtVisionEngine(graph)
    for i, size in enumerate(SIZES):
        image = preprocess_image(noise_image(size, i), model.preprocess_spec())
        assert image.trimmed().shape != image.pixel_values.shape or size[0] == size[1]
        full, trimmed = engine.encode(image.pixel_values), engine.encode(image.trimmed())
        assert full.shape == (image.num_tokens, model.text_hidden_size())
        np.testing.assert_allclose(full, trimmed, atol=1e-5)


def test_eagle25_tile_batch_is_dynamic(family_graph):
    model, graph, _ = family_graph("eagle2_5")
    engine = OrtVisionEngine(graph)
    spec = model.preprocess_spec()
    tile_counts = set()
    for i, size in enumerate(SIZES):
        image = preprocess_image(noise_image(size, i), spec)
        tile_counts.add(image.pixel_values.shape[0])
        assert engine.encode(image.pixel_values).shape == (image.num_tokens, model.text_hidden_size())
    assert len(tile_counts) >= 3, tile_counts


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_is_portable(family, family_graph):
    """Standard ONNX ops only (TensorRT parses them), IR version ORT 1.31 reads, no decoder weights inside."""
    model, path, part = family_graph(family)
    graph = onnx.load(str(path))
    assert graph.ir_version <= 13
    assert {op.domain for op in graph.opset_import} <= {"", "ai.onnx"}
    assert "NonZero" not in {node.op_type for node in graph.graph.node}
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)
    weights = sum(onnx.numpy_helper.to_array(t).nbytes for t in graph.graph.initializer)
    decoder = sum(p.numel() * p.element_size() for p in model.decoder.model.layers.parameters())
    assert weights < sum(p.numel() * p.element_size() for p in model.parameters()) - decoder
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == part["inputs"]["pixel_values"]["shape"]


def test_fp16_graph_keeps_float32_interface(tiny_eagle25_dir, tmp_path):
    model = load_model(tiny_eagle25_dir)
    result = export_vision(model, tmp_path, dtype=torch.float16)
    assert result.dtype == "float16"
    assert {p.dtype for p in model.parameters()} == {torch.float32}, "cast for the export only"
    engine = OrtVisionEngine(result.files[0])
    pixels = preprocess_image(noise_image((90, 50), 0), model.preprocess_spec()).pixel_values
    rows = engine.encode(pixels)
    assert rows.dtype == np.float32
    report = vision_parity(TorchVision(model), engine, [pixels])
    assert report.passed(atol=5e-3), report


def test_external_data_written_once(tiny_eagle25_dir, tmp_path, monkeypatch):
    """Past the size limit the weights go to model.onnx.data; exporting again replaces, never appends."""
    monkeypatch.setattr(onnx_utils, "EXTERNAL_DATA_BYTES", 0)
    model = load_model(tiny_eagle25_dir)
    first = export_vision(model, tmp_path)
    assert [p.name for p in first.files] == ["model.onnx", "model.onnx.data"]
    size = first.files[1].stat().st_size
    second = export_vision(model, tmp_path)
    assert second.files[1].stat().st_size == size
    pixels = preprocess_image(noise_image((64, 64), 1), model.preprocess_spec()).pixel_values
    assert vision_parity(TorchVision(model), OrtVisionEngine(second.files[0]), [pixels]).passed(atol=1e-4)


def test_compare_reports_shape_and_error():
    report = compare({"a": np.ones((2, 3)), "b": np.zeros(4)}, {"a": np.full((2, 3), 1.5), "b": np.zeros(5)})
    a, b = report.diffs
    assert a.max_abs == pytest.approx(0.5) and a.max_rel == pytest.approx(0.5 / 1.5)
    assert not b.same_shape and not report.passed(atol=1.0)
    assert "(4,) != (5,)" in str(report)
