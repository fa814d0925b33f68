"""TensorRT vision engines. Here TensorRT-RTX (PyPI wheels) parses each family's vision ONNX and builds a real
engine ahead of time for SM89 with no GPU; the tests check what can be read without one: the builder's
network (I/O names, shapes, types), the profile ranges against what preprocessing really produces, the
precision the strongly typed network took from the graph, and the sidecar. Deserializing and running the
plan needs a GPU (and the TensorRT that built it): those tests are marked `gpu`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import make_tiny_checkpoint
from engines.tensorrt import PLAN, EngineBuildError, build_engine, profile_shapes
from export.vision import export_vision
from models.checkpoint import load_model
from runtime.backends.tensorrt_vision import TensorRTVisionEngine, import_tensorrt, sidecar_path
from runtime.errors import AerieError
from runtime.preprocess import PreprocessSpec, preprocess_image

trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX wheels (tensorrt-rtx-cu13-*) are not installed")

TARGET = "SM89"


CHECKPOINTS = {"eve": "tiny_eve_dir", "eagle2_5": "tiny_eagle25_dir"}


@pytest.fixture(scope="module", params=["eve", "eagle2_5", pytest.param("eagle_v1", marks=pytest.mark.slow)])
def vision_engine(request, tmp_path_factory):
    """Each family's vision graph (export/vision.py) and its TensorRT-RTX engine."""
    if request.param in CHECKPOINTS:
        checkpoint = request.getfixturevalue(CHECKPOINTS[request.param])
    else:  # Eagle v1's five experts export slowly (~50 s): only this file builds it
        checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_eagle_v1"), "eagle_v1")
    model = load_model(checkpoint)
    spec = model.preprocess_spec()
    directory = tmp_path_factory.mktemp(f"trt_{model.family}")
    export_vision(model, directory, spec)
    sidecar = build_engine(directory / "model.onnx", directory, spec, compute_capability=TARGET)
    return model, spec, directory, sidecar


def random_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    sizes = [(int(w), int(h)) for w, h in rng.integers(8, 900, size=(n, 2))]
    return sizes + [(1, 1), (4000, 7), (7, 4000), (640, 480), (1024, 1024)]


def test_engine_is_built_for_the_named_target(vision_engine):
    _, _, directory, sidecar = vision_engine
    assert (directory / PLAN).stat().st_size > 100_000
    assert json.loads(sidecar_path(directory / PLAN).read_text()) == sidecar
    assert sidecar["tensorrt"] == {"module": "tensorrt_rtx_bindings", "product": "TensorRT-RTX", "version": trt.__version__}
    assert sidecar["compute_capability"] == TARGET
    assert sidecar["strongly_typed"] and sidecar["precision"] == "fp32"
    print(f"built {sidecar['source']} -> {(directory / PLAN).stat().st_size} bytes in {sidecar['build_seconds']} s")


def test_io_names_shapes_and_profile(vision_engine):
    model, spec, _, sidecar = vision_engine
    hidden = model.text_hidden_size()
    [pixels], [embeds] = sidecar["inputs"], sidecar["outputs"]
    assert (pixels["name"], pixels["dtype"], embeds["name"], embeds["dtype"]) == ("pixel_values", "FLOAT", "image_embeds", "FLOAT")
    tile = spec.image_size
    if spec.kind == "dynamic_tiles":
        # tiny Eagle2.5: 1..6 tiles, plus the thumbnail when there is more than one
        assert pixels["shape"] == [-1, 3, tile, tile] and embeds["shape"] == [-1, spec.tokens_per_tile, hidden]
        assert pixels["profile"] == {"min": [1, 3, tile, tile], "opt": [7, 3, tile, tile], "max": [7, 3, tile, tile]}
    elif spec.kind == "pad_square":
        # tiny Eagle v1: one 128-pixel square per call, 16 tokens
        assert pixels["shape"] == [-1, 3, tile, tile] and embeds["shape"] == [-1, spec.tokens_per_image, hidden]
        assert pixels["profile"] == {"min": [1, 3, tile, tile], "opt": [1, 3, tile, tile], "max": [1, 3, tile, tile]}
    else:
        # tiny EVE: canvas 112 = 2 x the 56 teacher grid, so one 14-pixel patch row is 28 pixels on the canvas
        assert pixels["shape"] == [1, 4, -1, -1] and embeds["shape"] == [1, -1, hidden]
        assert pixels["profile"] == {"min": [1, 4, 28, 28], "opt": [1, 4, 112, 112], "max": [1, 4, 112, 112]}


def test_profile_covers_every_input_preprocessing_gives(vision_engine):
    """The runtime feeds ImageInput.trimmed(): every such shape must lie inside the profile, and the profile's
    ends must be reached (a wider profile costs memory, a narrower one rejects images)."""
    _, spec, _, sidecar = vision_engine
    profile = sidecar["inputs"][0]["profile"]
    shapes = np.array([preprocess_image(Image.new("RGB", size), spec).trimmed().shape for size in random_sizes(60)])
    assert (shapes >= profile["min"]).all() and (shapes <= profile["max"]).all()
    assert (shapes.min(0) == profile["min"]).all() and (shapes.max(0) == profile["max"]).all()


def test_tiling_limits_set_the_tile_profile():
    spec = PreprocessSpec(kind="dynamic_tiles", image_size=448, tokens_per_tile=256, min_tiles=2, max_tiles=4)
    assert profile_shapes(spec, "pixel_values", (-1, 3, 448, 448)) == ((3, 3, 448, 448), (5, 3, 448, 448), (5, 3, 448, 448))
    single = PreprocessSpec(kind="dynamic_tiles", image_size=448, tokens_per_tile=256, min_tiles=1, max_tiles=1)
    assert profile_shapes(single, "pixel_values", (-1, 3, 448, 448))[2] == (1, 3, 448, 448)
    eve_hd = PreprocessSpec(kind="eve_anyres", image_size=1344)
    assert profile_shapes(eve_hd, "pixel_values", (1, 4, -1, -1)) == ((1, 4, 56, 56), (1, 4, 1344, 1344), (1, 4, 1344, 1344))
    with pytest.raises(EngineBuildError, match="dims \\[2\\] are dynamic"):
        profile_shapes(spec, "pixel_values", (-1, 3, -1, 448))


def test_fp16_graph_gives_an_fp16_engine(tiny_eagle25_dir, tmp_path):
    import torch

    model = load_model(tiny_eagle25_dir)
    spec = model.preprocess_spec()
    export_vision(model, tmp_path, spec, torch.float16)
    sidecar = build_engine(tmp_path / "model.onnx", tmp_path, spec, compute_capability=TARGET)
    assert sidecar["precision"] == "fp16" and "HALF" in sidecar["tensor_dtypes"]
    # the graph keeps float32 at both ends (export/vision.py), and the strongly typed engine keeps its types
    assert sidecar["inputs"][0]["dtype"] == sidecar["outputs"][0]["dtype"] == "FLOAT"


def qdq_graph(path, tile: int, hidden: int, kind: int = TensorProto.FLOAT8E4M3FN) -> None:
    """A vision-shaped graph whose activations and weights pass Q/DQ in `kind` (FP8 or INT8)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3 * tile * tile, hidden)).astype(np.float32) * 0.02
    w_scale = np.float32(np.abs(weight).max() / (448 if kind == TensorProto.FLOAT8E4M3FN else 127))
    quantized = weight / w_scale if kind == TensorProto.FLOAT8E4M3FN else np.round(weight / w_scale)
    nodes = [
        helper.make_node("Flatten", ["pixel_values"], ["x"], axis=1),
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["image_embeds"]),
    ]
    inits = [
        helper.make_tensor("w_q", kind, weight.shape, quantized.flatten().tolist()),
        helper.make_tensor("x_zero", kind, [], [0]),
        numpy_helper.from_array(np.float32(0.05), "x_scale"),
        numpy_helper.from_array(w_scale, "w_scale"),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["tiles", 3, tile, tile])],
                              [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["tiles", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.parametrize("kind, precision", [(TensorProto.FLOAT8E4M3FN, "fp8"), (TensorProto.INT8, "int8")], ids=["fp8", "int8"])
def test_qdq_graph_gives_a_quantized_engine(tmp_path, kind, precision):
    spec = PreprocessSpec(kind="dynamic_tiles", image_size=28, tokens_per_tile=1, max_tiles=4)
    qdq_graph(tmp_path / "model.onnx", 28, 128, kind)
    sidecar = build_engine(tmp_path / "model.onnx", tmp_path, spec, compute_capability=TARGET)
    assert sidecar["precision"] == precision
    assert sidecar["inputs"][0]["profile"]["max"] == [5, 3, 28, 28]


def test_fp8_engine_needs_an_fp8_target(tmp_path):
    """The FP8 layers are real: TensorRT-RTX refuses to compile them for Ampere (no FP8 units)."""
    spec = PreprocessSpec(kind="dynamic_tiles", image_size=28, tokens_per_tile=1, max_tiles=4)
    qdq_graph(tmp_path / "model.onnx", 28, 128)
    with pytest.raises(EngineBuildError, match="sm80.*fp8"):
        build_engine(tmp_path / "model.onnx", tmp_path, spec, compute_capability="SM80")


def test_unknown_target_and_unparsable_graph_fail_in_one_line(tmp_path):
    spec = PreprocessSpec(kind="dynamic_tiles", image_size=28, tokens_per_tile=1, max_tiles=4)
    qdq_graph(tmp_path / "model.onnx", 28, 128)
    with pytest.raises(EngineBuildError, match="compute capability, one of .*SM89.*got 'SM90'"):
        build_engine(tmp_path / "model.onnx", tmp_path, spec, compute_capability="SM90")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(EngineBuildError, match="none is here: pass the target's compute capability"):
            build_engine(tmp_path / "model.onnx", tmp_path, spec, compute_capability=None)
    # An ONNX Runtime contrib op (the INT4 CPU decoder's MatMulNBits) is not TensorRT's
    node = helper.make_node("MatMulNBits", ["pixel_values", "w", "s"], ["image_embeds"], domain="com.microsoft", K=4, N=4, bits=4, block_size=16)
    graph = helper.make_graph([node], "ort", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.zeros((4, 1, 8), np.uint8), "w"), numpy_helper.from_array(np.ones(4, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "ort.onnx"))
    with pytest.raises(EngineBuildError, match="cannot parse the graph: .*MatMulNBits") as err:
        build_engine(tmp_path / "ort.onnx", tmp_path, spec, compute_capability=TARGET)
    assert "\n" not in str(err.value)


def test_runtime_backend_stops_where_the_gpu_is_needed(vision_engine):
    """Without a GPU the backend gets as far as the installed TensorRT and then says, in one line, what is missing."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; test_engine_matches_pytorch_on_gpu runs instead")
    _, _, directory, _ = vision_engine
    with pytest.raises(AerieError, match="needs an NVIDIA GPU") as err:
        TensorRTVisionEngine(directory / PLAN)
    assert "\n" not in str(err.value)


def test_runtime_backend_refuses_a_plan_from_another_tensorrt(vision_engine, tmp_path):
    _, _, directory, sidecar = vision_engine
    (tmp_path / PLAN).write_bytes((directory / PLAN).read_bytes())
    other = {**sidecar, "tensorrt": {"module": "tensorrt", "product": "TensorRT", "version": "10.14.1"}}
    sidecar_path(tmp_path / PLAN).write_text(json.dumps(other))
    with pytest.raises(AerieError, match="built by TensorRT 10.14.1 but TensorRT-RTX .* is installed; rebuild"):
        TensorRTVisionEngine(tmp_path / PLAN)


@pytest.mark.gpu
def test_engine_matches_pytorch_on_gpu(tiny_checkpoint, tmp_path):
    """On a GPU, an engine built for that GPU runs under the backend; its rows match the PyTorch oracle."""
    model = load_model(tiny_checkpoint)
    spec = model.preprocess_spec()
    export_vision(model, tmp_path, spec)
    target = "CURRENT" if import_tensorrt().__name__.startswith("tensorrt_rtx") else None
    build_engine(tmp_path / "model.onnx", tmp_path, spec, compute_capability=target)
    engine = TensorRTVisionEngine(tmp_path / PLAN)
    for size in [(90, 50), (50, 90), (300, 300)]:
        image = preprocess_image(Image.new("RGB", size, (200, 10, 10)), spec)
        expected = model.image_table([image]).detach().numpy()
        got = engine.encode(image.trimmed())
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-3
