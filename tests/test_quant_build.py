"""`build.py --quant` and `python -m quant` end to end on tiny models: one linear build (the INT4 decoder is
exported once, from the quantizer's TensorRT-LLM checkpoint, and the manifest written once), the engine checked
against PyTorch by its accuracy (the quantized self-check), every artifact and the report written and
checksummed, a build that loses more accuracy than allowed failing with the engine kept, and the TensorRT
backend taking the quantized checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from conftest import make_tiny_checkpoint
from quant.__main__ import main as quant_main
from runtime.manifest import read_manifest, verify
from runtime.pipeline import Pipeline
from tiny_engines import run_build

SMALL = ["--calib-samples", "2", "--calib-max-length", "64", "--eval-limit", "4", "--self-check-tokens", "4"]


@pytest.fixture(scope="module")
def int4_engine(tiny_eve_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant_build") / "engine"
    code, stdout, stderr = run_build([str(tiny_eve_dir), "--out", str(out), "--quant", "int4_awq", *SMALL])
    assert code == 0, stdout + stderr
    return out, stdout


def test_eagle2_int4_awq_build(tmp_path):
    """Eagle2's Qwen2.5 decoder is quantized by module name as Eagle2.5's is (quant/quantized.py LINEARS)."""
    checkpoint = make_tiny_checkpoint(tmp_path / "checkpoint", "eagle2")
    out = tmp_path / "engine"
    code, stdout, stderr = run_build([str(checkpoint), "--out", str(out), "--quant", "int4_awq", *SMALL])
    assert code == 0, stdout + stderr
    manifest = read_manifest(out)
    decoder = manifest.parts["decoder"]
    assert manifest.family == "eagle2" and manifest.build["quantization"]["quant_algo"] == "W4A16_AWQ"
    assert decoder["quantization"]["linear"] == "int4"
    assert "model.layers.1.self_attn.q_proj" in decoder["quantization"]["modules"]
    assert "self-check     int4_awq ORT" in stdout  # the INT4 engine answered the benchmark questions


def test_int8_vision_for_the_cpu(tiny_eagle25_dir, tmp_path):
    """--quant-vision int8 on ort: the engine's own vision graph in INT8 (ONNX Runtime's integer MatMuls), listed
    and checksummed in the manifest, in the report's engine row and under its gate; no TensorRT Q/DQ graph."""
    out = tmp_path / "engine"
    code, stdout, stderr = run_build([str(tiny_eagle25_dir), "--out", str(out), "--quant", "int4_awq",
                                      "--quant-vision", "int8", *SMALL])
    assert code == 0, stdout + stderr
    assert "vision int8" in stdout and "INT8 MatMuls for the CPU" in stdout
    manifest = verify(out)
    vision = manifest.parts["vision"]
    assert vision["quantization"] == "int8" and vision["model"] in vision["files"]
    nodes = onnx.load(str(out / vision["model"]), load_external_data=False).graph.node
    assert any(node.op_type == "MatMulInteger" for node in nodes)
    assert not (out / "quantization" / "vision_int8").exists()
    report = (out / "quantization" / "report" / "report.md").read_text()
    assert "behind the INT8 vision graph" in report
    pipe = Pipeline(out, threads=1)
    image = str(Path(__file__).resolve().parent.parent / "examples" / "images" / "shapes.png")
    assert isinstance(pipe.generate("What colour is the shape?", images=[image], max_new_tokens=4), str)


def test_one_linear_build(int4_engine):
    """Each step once, in the design's order; the manifest written once, before the engine is checked."""
    _, stdout = int4_engine
    steps = [line.split()[0] for line in stdout.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert steps == ["tokenizer", "load", "calibration", "quantize", "trtllm", "hf", "export", "export", "reference",
                     "write", "verify", "self-check"], stdout
    assert stdout.count("export decoder") == 1 and "INT4 linears" in stdout


def test_int4_engine_runs_with_the_int4_decoder(int4_engine):
    out, _ = int4_engine
    manifest = verify(out)
    decoder = manifest.parts["decoder"]
    assert decoder["quantization"]["linear"] == "int4" and decoder["quantization"]["source"] == "trtllm_checkpoint"
    assert "model.layers.0.self_attn.q_proj" in decoder["quantization"]["modules"]
    # the lm_head rounded to 4 bits by default (build.py --lm-head), said in the manifest twice
    assert decoder["quantization"]["lm_head"] == "int4" and manifest.build["flags"]["lm_head"] == "int4"
    assert manifest.build["quantization"]["quant_algo"] == "W4A16_AWQ"
    assert manifest.build["quantization"]["calibration"]["image_tokens"] > 0
    pipe = Pipeline(out, threads=1)
    assert isinstance(pipe.generate("What colour is the shape?", max_new_tokens=4), str)


def test_artifacts_and_report_are_in_the_engine(int4_engine):
    out, stdout = int4_engine
    q = out / "quantization"
    assert json.loads((q / "trtllm_checkpoint" / "config.json").read_text())["quantization"]["quant_algo"] == "W4A16_AWQ"
    assert (q / "hf_checkpoint" / "hf_quant_config.json").is_file()
    assert json.loads((q / "calibration.json").read_text())["calibration"]["samples"] == 2
    assert not (q / "vision_fp8").exists()  # int4_awq keeps the vision float unless asked
    manifest = verify(out)
    assert "quantization/trtllm_checkpoint/rank0.safetensors" in manifest.files
    for name in ("report.json", "report.md", "comparison.md", "comparison.png", "comparison.json"):
        assert (q / "report" / name).is_file(), name
    assert not any(name.startswith("quantization/report/") for name in manifest.files)  # written after it
    data = json.loads((q / "report" / "report.json").read_text())
    assert list(data["rows"]) == ["fp32", "int4_awq ORT"]
    ort_row = data["rows"]["int4_awq ORT"]
    assert set(ort_row["accuracy"]) >= {"overall"} and ort_row["agreement"]["positions"] > 0
    assert 0 <= ort_row["agreement"]["token_agreement"] <= 1 and ort_row["agreement"]["mean_kl"] >= 0
    assert ort_row["speed"]["decode_tokens_per_s"] > 0
    assert data["gate"]["row"] == "int4_awq ORT" and data["gate"]["passed"]
    assert data["benchmark"]["questions"] == 4
    assert "| int4_awq ORT |" in (q / "report" / "report.md").read_text()
    assert "int4_awq ORT:" in stdout and "4 questions" in stdout


def test_failing_gate_fails_the_build_and_keeps_the_engine(tiny_eagle25_dir, tmp_path):
    """w4a8_awq (with the default FP8 vision graph) and a limit no engine can meet: the self-check's exit code,
    the drop in the message, nothing at --out, the engine and its report kept beside it."""
    out = tmp_path / "engine"
    code, stdout, stderr = run_build([str(tiny_eagle25_dir), "--out", str(out), "--quant", "w4a8_awq", *SMALL[:4],
                                      "--eval-limit", "3", "--max-accuracy-drop", "-1"])
    assert code == 6, stdout + stderr
    assert "lost 0.0 points of accuracy against fp32" in stderr and "more than the -1 allowed" in stderr
    assert not out.exists()
    kept = tmp_path / ".engine.partial"
    assert f"kept in {kept}" in stderr
    data = json.loads((kept / "quantization" / "report" / "report.json").read_text())
    assert data["gate"]["row"] == "w4a8_awq + fp8 vision" and not data["gate"]["passed"]
    assert list(data["rows"]) == ["fp32", "w4a8_awq fake-quant", "fp8 vision", "w4a8_awq + fp8 vision"]
    config = json.loads((kept / "quantization" / "trtllm_checkpoint" / "config.json").read_text())
    assert config["quantization"]["quant_algo"] == "W4A8_AWQ"
    assert (kept / "quantization" / "vision_fp8" / "model.onnx").is_file()


def test_tensorrt_backend_builds_from_the_quantized_checkpoint(tiny_eve_dir, tmp_path):
    """--backend tensorrt --quant int4_awq: the decoder part is the quantizer's checkpoint with its build script
    (trtllm-build runs on the target GPU: a pending step), the vision plan built by TensorRT-RTX for SM89."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX wheels (tensorrt-rtx-cu13-*) are not installed")
    out = tmp_path / "engine"
    code, stdout, stderr = run_build([str(tiny_eve_dir), "--out", str(out), "--backend", "tensorrt",
                                      "--compute-capability", "SM89", "--quant", "int4_awq", *SMALL[:4]])
    assert code == 0, stdout + stderr
    config = json.loads((out / "decoder" / "trtllm_checkpoint" / "config.json").read_text())
    assert config["quantization"]["quant_algo"] == "W4A16_AWQ"
    assert "--gemm_plugin auto" in (out / "decoder" / "build_engine.sh").read_text()
    assert not (out / "quantization" / "trtllm_checkpoint").exists(), "moved into the decoder part, not copied"
    manifest = verify(out)
    assert manifest.parts["decoder"]["quantization"] == "W4A16_AWQ" and len(manifest.pending) == 1
    assert "(self-check skipped" in stdout


def test_quant_command_writes_the_checkpoints(tiny_eagle25_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert quant_main([str(tiny_eagle25_dir), "--mode", "fp8", "--out", str(out), *SMALL[:4], "--kv-cache-fp8"]) == 0
    printed = capsys.readouterr().out
    for step in ("load", "calibration", "quantize", "trtllm ckpt", "hf checkpoint"):
        assert f"  {step}" in printed
    config = json.loads((out / "trtllm_checkpoint" / "config.json").read_text())
    assert config["quantization"] == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}
    record = json.loads((out / "calibration.json").read_text())
    assert record["mode"] == "fp8" and record["options"]["kv_cache_fp8"] is True
    assert (out / "hf_checkpoint" / "hf_quant_config.json").is_file()
    assert quant_main([str(tiny_eagle25_dir), "--mode", "fp8", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
