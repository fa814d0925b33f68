"""`python -m runtime triton ENGINE_DIR`: the model repository it writes, every config.pbtxt parsed by Triton's
own ModelConfig schema (tritonclient's model_config_pb2), batching and instances taken from the engine, and
the vision model for Triton's native onnxruntime_onnx / tensorrt_plan platforms (the plan really built by
TensorRT-RTX) with the engine's files linked in."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from runtime.errors import AerieError, ManifestError
from runtime.manifest import verify, write_manifest
from runtime.preprocess import tile_count_range
from runtime.triton.repository import TritonOptions, validate_config, write_repository
from tiny_engines import built_engine

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {v: k for k, v in model_config_pb2.DataType.items()}


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def engine_copy(family: str, tmp_path_factory, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_engine(family, tmp_path_factory)[1], tmp_path / "engine", symlinks=True))


@pytest.mark.parametrize("family", ["eve", "eagle2_5"])
def test_repository_models_and_configs(family, tmp_path_factory, tmp_path):
    engine = engine_copy(family, tmp_path_factory, tmp_path)
    root = write_repository(engine, TritonOptions(max_batch=3, vision_instances=2, max_tokens=100))
    assert root == engine / "triton"
    assert sorted(p.name for p in root.iterdir()) == ["aerie", "aerie_stream", "aerie_vision"]
    configs = {name: parse(root / name / "config.pbtxt") for name in ("aerie", "aerie_stream", "aerie_vision")}
    for name, config in configs.items():
        assert config.name == name and config.backend == "python"
        assert (root / name / "1" / "model.py").read_text().count("runtime.triton.") == 1

    entry, stream, vision = configs["aerie"], configs["aerie_stream"], configs["aerie_vision"]
    assert not entry.model_transaction_policy.decoupled and stream.model_transaction_policy.decoupled
    assert entry.max_batch_size == stream.max_batch_size == 3
    assert entry.HasField("dynamic_batching") and stream.HasField("dynamic_batching")
    assert [g.kind for g in stream.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert stream.instance_group[0].count == 1, "one instance holds the engine; the batch is inside it"
    inputs = {t.name: t for t in stream.input}
    assert DTYPES[inputs["text_input"].data_type] == "TYPE_STRING" and not inputs["text_input"].optional
    assert inputs["image_input"].optional and inputs["image_input"].allow_ragged_batch
    assert "stream" in inputs and "stream" not in {t.name for t in entry.input}
    assert [t.name for t in stream.output] == [t.name for t in entry.output] == [
        "text_output", "finish_reason", "prompt_tokens", "completion_tokens"]
    params = {k: v.string_value for k, v in stream.parameters.items()}
    assert params["engine_dir"] == "../.." and params["vision_model"] == "aerie_vision"
    assert params["max_tokens"] == "100"

    manifest = verify(engine)
    part = manifest.part("vision")
    (in_name, in_spec), = part["inputs"].items()
    (out_name, out_spec), = part["outputs"].items()
    assert [t.name for t in vision.input] == [in_name] and [t.name for t in vision.output] == [out_name]
    assert vision.instance_group[0].count == 2
    if family == "eagle2_5":  # the tile batch is Triton's batch dimension: tiles of several requests batch
        assert vision.max_batch_size == tile_count_range(manifest.preprocess_spec())[1]
        assert list(vision.input[0].dims) == in_spec["shape"][1:]
        assert vision.HasField("dynamic_batching")
    else:  # one image of any size per request
        assert vision.max_batch_size == 0
        assert list(vision.input[0].dims) == [1, 4, -1, -1]
    assert list(vision.output[0].dims)[-1] == manifest.image_tokens["hidden_size"]


def test_validation_is_triton_schema():
    good = 'name: "m"\nbackend: "python"\nmax_batch_size: 2\ninstance_group [ { kind: KIND_CPU count: 1 } ]\n'
    assert validate_config(good, "m")
    for bad in (good.replace("KIND_CPU", "KIND_CPUU"), good.replace("2", '"two"'), good + "bogus_field: 1\n"):
        with pytest.raises(AerieError, match="not a valid Triton model config"):
            validate_config(bad, "m")


def test_onnxruntime_platform_links_the_engine_files(tmp_path_factory, tmp_path):
    engine = engine_copy("eagle2_5", tmp_path_factory, tmp_path)
    root = write_repository(engine, TritonOptions(vision_platform="onnxruntime_onnx"))
    config = parse(root / "aerie_vision" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and not config.backend
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    link = root / "aerie_vision" / "1" / "model.onnx"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.read_bytes() == (engine / "vision" / "model.onnx").read_bytes()
    moved = Path(shutil.move(engine, tmp_path / "moved"))
    assert (moved / "triton" / "aerie_vision" / "1" / "model.onnx").is_file(), "the link broke when the engine moved"
    with pytest.raises(AerieError, match="needs a TensorRT vision part"):
        write_repository(moved, TritonOptions(vision_platform="tensorrt_plan"), force=True)


def test_tensorrt_platform_from_a_real_plan(tmp_path_factory, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX wheels (tensorrt-rtx-cu13-*) are not installed")
    from engines.tensorrt import build_vision_part

    engine = engine_copy("eagle2_5", tmp_path_factory, tmp_path)
    manifest = verify(engine)
    manifest.parts["vision"] = build_vision_part(engine, manifest.preprocess_spec(), "SM89")
    write_manifest(engine, manifest)
    root = write_repository(engine, TritonOptions(vision_platform="tensorrt_plan", device="cuda"))
    config = parse(root / "aerie_vision" / "config.pbtxt")
    assert config.platform == "tensorrt_plan"
    assert config.max_batch_size == tile_count_range(manifest.preprocess_spec())[1]
    assert [t.name for t in config.input] == ["pixel_values"] and [t.name for t in config.output] == ["image_embeds"]
    assert (root / "aerie_vision" / "1" / "model.plan").read_bytes() == (engine / "vision" / "model.plan").read_bytes()
    stream = parse(root / "aerie_stream" / "config.pbtxt")
    assert [g.kind for g in stream.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]


def test_cli_writes_and_refuses_to_overwrite(tmp_path_factory, tmp_path):
    engine = engine_copy("eve", tmp_path_factory, tmp_path)
    run = [sys.executable, "-m", "runtime", "triton", str(engine), "--max-batch", "2"]
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "configs checked against Triton's ModelConfig schema" in done.stdout
    assert parse(engine / "triton" / "aerie" / "config.pbtxt").max_batch_size == 2
    again = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already exists; pass --force" in again.stderr
    forced = subprocess.run([*run, "--force"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert forced.returncode == 0, forced.stderr
    verify(engine)  # the repository leaves the engine's own files as they were


def test_generator_verifies_the_engine_first(tmp_path_factory, tmp_path):
    """The repository's models run the engine's files: a changed file (same size) is refused before writing."""
    engine = engine_copy("eve", tmp_path_factory, tmp_path)
    model = engine / "vision" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"vision/model\.onnx: sha256 differs"):
        write_repository(engine, TritonOptions())
    assert not (engine / "triton").exists()


def test_nothing_is_written_through_symbolic_links(tmp_path_factory, tmp_path):
    """A `.triton.partial` link placed beforehand is not written through, and --force replaces a linked
    `triton/` (the link, not what it points to) instead of failing with a traceback."""
    engine = engine_copy("eve", tmp_path_factory, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (engine / ".triton.partial").symlink_to(elsewhere)
    write_repository(engine, TritonOptions())
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    assert not (engine / ".triton.partial").exists() and not (engine / ".triton.partial").is_symlink()
    shutil.rmtree(engine / "triton")
    (engine / "triton").symlink_to(elsewhere)
    run = [sys.executable, "-m", "runtime", "triton", str(engine), "--force"]
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert (engine / "triton").is_dir() and not (engine / "triton").is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"] and (elsewhere / "keep.txt").read_text() == "mine"
