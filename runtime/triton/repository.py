"""Write `ENGINE_DIR/triton/`: a Triton Inference Server model repository for an engine directory.

    aerie          python, plain request/response (HTTP and gRPC `infer`), dynamic batching; forwards each
                   request to aerie_stream (BLS) and returns the whole answer
    aerie_stream   python, decoupled: the answer streamed piece by piece (gRPC streaming, HTTP
                   generate_stream). It owns the decoder: preprocessing, chat template and tokenizer, the
                   generation loop with continuous batching (runtime/server/scheduler.py), detokenization
                   and stop strings; it calls aerie_vision for every image not in its cache (BLS)
    aerie_vision   the vision engine: python (the runtime's own engine: CPU or GPU), or Triton's native
                   onnxruntime_onnx / tensorrt_plan platforms for GPU deployments

Why BLS and not an ensemble (docs/serving.md): an ensemble is one pass through a DAG, while generation is a
loop with per-request state (KV-cache slot, sampler, incremental detokenizer, stop strings) and requests
joining the running batch between steps, so the language model step would hold the whole loop anyway and a
stateless postprocessing step could not detokenize correctly piece by piece. One BLS model runs exactly the
runtime's Pipeline, so Triton gives the same tokens as `python -m runtime`; the vision engine stays a model
of its own, so it can run on Triton's native GPU platforms with their own batching and instances.

Every config.pbtxt is checked against Triton's ModelConfig schema (tritonclient's model_config_pb2) when
tritonclient is installed. The model code lives in runtime/triton/*_model.py; each model.py imports it, so
Triton's Python environment needs the runtime installed (docs/serving.md).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import AerieError
from ..manifest import Manifest, verify
from ..preprocess import tile_count_range

REPOSITORY = "triton"
VISION_PLATFORMS = ("python", "onnxruntime_onnx", "tensorrt_plan")
NUMPY_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}
TENSORRT_TO_TRITON = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "BF16": "TYPE_BF16"}

# (name, Triton type, dims, optional): the request tensors aerie and aerie_stream take (batch dim implicit).
REQUEST_INPUTS = [
    ("text_input", "TYPE_STRING", [1], False),  # the question
    ("image_input", "TYPE_STRING", [-1], True),  # encoded image files (PNG, JPEG, ...), one element each
    ("image", "TYPE_STRING", [-1], True),  # images as base64 or data: URLs (JSON: HTTP generate; vLLM's name)
    ("max_tokens", "TYPE_INT32", [1], True),
    ("temperature", "TYPE_FP32", [1], True),
    ("top_p", "TYPE_FP32", [1], True),
    ("top_k", "TYPE_INT32", [1], True),
    ("repetition_penalty", "TYPE_FP32", [1], True),
    ("seed", "TYPE_INT64", [1], True),
    ("stop", "TYPE_STRING", [-1], True),  # extra stop strings
]
STREAM_INPUT = ("stream", "TYPE_BOOL", [1], True)  # aerie_stream only: false sends one response at the end
REQUEST_OUTPUTS = [
    ("text_output", "TYPE_STRING", [1]),  # the whole answer, or the next piece when streaming
    ("finish_reason", "TYPE_STRING", [1]),  # "" until the last response; then stop / length
    ("prompt_tokens", "TYPE_INT32", [1]),
    ("completion_tokens", "TYPE_INT32", [1]),
]


@dataclass(frozen=True)
class TritonOptions:
    max_batch: int = 4  # decoder slots: requests decoded together (max_batch_size of aerie, aerie_stream)
    device: str = "cpu"  # where the runtime's engines run inside Triton: cpu or cuda
    threads: int | None = None  # CPU threads per engine
    vision_platform: str = "python"
    vision_instances: int = 1
    max_queue: int = 32
    max_tokens: int = 512
    max_image_pixels: int = 16_000_000
    request_timeout: float = 120.0
    entry_instances: int = 2  # aerie instances: one gathers a batch while another waits for its answers


# --- config.pbtxt text ---------------------------------------------------------------------------------


def tensor(name: str, dtype: str, dims: list[int], optional: bool = False, ragged: bool = False) -> str:
    extra = (" optional: true" if optional else "") + (" allow_ragged_batch: true" if ragged else "")
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ]{extra} }}'


def tensors(kind: str, items: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def parameters(values: dict[str, object]) -> str:
    items = [f'  {{ key: "{k}" value: {{ string_value: {json.dumps("" if v is None else str(v))} }} }}'
             for k, v in values.items()]
    return tensors("parameters", items)


def instance_group(kind: str, count: int) -> str:
    return f"instance_group [\n  {{ kind: {kind} count: {count} }}\n]\n"


def request_inputs(with_stream: bool) -> list[str]:
    rows = REQUEST_INPUTS + ([STREAM_INPUT] if with_stream else [])
    # Variable-length tensors are ragged so that requests with different counts still batch together.
    return [tensor(name, dtype, dims, optional, ragged=-1 in dims) for name, dtype, dims, optional in rows]


def request_outputs() -> list[str]:
    return [tensor(name, dtype, dims) for name, dtype, dims in REQUEST_OUTPUTS]


def entry_config(options: TritonOptions) -> str:
    return (
        'name: "aerie"\nbackend: "python"\n'
        f"max_batch_size: {options.max_batch}\n"
        "dynamic_batching { max_queue_delay_microseconds: 1000 }\n"
        + tensors("input", request_inputs(False)) + tensors("output", request_outputs())
        + instance_group("KIND_CPU", options.entry_instances)
        + parameters({"stream_model": "aerie_stream"})
    )


def stream_config(options: TritonOptions) -> str:
    kind = "KIND_GPU" if options.device == "cuda" else "KIND_CPU"
    return (
        'name: "aerie_stream"\nbackend: "python"\n'
        f"max_batch_size: {options.max_batch}\n"
        "model_transaction_policy { decoupled: true }\n"
        "dynamic_batching { }\n"
        + tensors("input", request_inputs(True)) + tensors("output", request_outputs())
        # One instance: it holds the engine; concurrency comes from the batch inside it.
        + instance_group(kind, 1)
        + parameters({"engine_dir": "../..", "vision_model": "aerie_vision", "device": options.device,
                      "threads": options.threads, "max_batch": options.max_batch, "max_queue": options.max_queue,
                      "max_tokens": options.max_tokens, "max_image_pixels": options.max_image_pixels,
                      "request_timeout": options.request_timeout})
    )


def vision_io(engine_dir: Path, part: dict) -> tuple[list[tuple[str, str, list]], list[tuple[str, str, list]]]:
    """The vision engine's (name, Triton type, shape) inputs and outputs, symbolic sizes as -1: from the
    manifest (ONNX parts) or the TensorRT plan's sidecar."""
    if "inputs" in part:
        def rows(d: dict):
            return [(name, NUMPY_TO_TRITON[t["dtype"]], [s if isinstance(s, int) else -1 for s in t["shape"]])
                    for name, t in d.items()]
        return rows(part["inputs"]), rows(part["outputs"])
    sidecar = engine_dir / (part["plan"] + ".json")
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AerieError(f"{sidecar}: cannot read the TensorRT plan's description ({e}); rebuild the engine") from None

    def plan_rows(items: list):
        return [(t["name"], TENSORRT_TO_TRITON[t["dtype"]], [int(s) for s in t["shape"]]) for t in items]
    return plan_rows(info["inputs"]), plan_rows(info["outputs"])


def vision_batch(manifest: Manifest, inputs: list) -> int:
    """max_batch_size of the vision model: the most tiles of one image when the first dimension is the
    tile batch (Eagle2/2.5), else 0 (one image of a fixed batch of 1, its size free: EVE, Eagle v1)."""
    first = inputs[0][2][0]
    if first != -1:
        return 0
    return tile_count_range(manifest.preprocess_spec())[1]


def vision_config(engine_dir: Path, manifest: Manifest, options: TritonOptions) -> str:
    part = manifest.part("vision")
    inputs, outputs = vision_io(engine_dir, part)
    batch = vision_batch(manifest, inputs)
    platform = options.vision_platform
    if platform == "python":
        head = 'name: "aerie_vision"\nbackend: "python"\n'
        kind = "KIND_GPU" if options.device == "cuda" else "KIND_CPU"
        extra = parameters({"engine_dir": "../..", "device": options.device, "threads": options.threads})
    else:
        head = f'name: "aerie_vision"\nplatform: "{platform}"\n'
        kind = "KIND_GPU"
        extra = ""

    def strip(shape: list) -> list:
        return shape[1:] if batch else shape

    return (
        head + f"max_batch_size: {batch}\n"
        + ("dynamic_batching { }\n" if batch else "")
        + tensors("input", [tensor(n, t, strip(s)) for n, t, s in inputs])
        + tensors("output", [tensor(n, t, strip(s)) for n, t, s in outputs])
        + instance_group(kind, options.vision_instances) + extra
    )


def validate_config(text: str, where: str) -> bool:
    """Parse `text` as Triton's ModelConfig; AerieError naming the problem. False if tritonclient is absent."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return False
    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise AerieError(f"{where}: not a valid Triton model config ({e}); this is a bug in the generator") from None
    return True


# --- the repository ------------------------------------------------------------------------------------

MODEL_PY = '''"""Triton python-backend model for Aerie: the code is runtime/triton/{module}.py (docs/serving.md)."""

from runtime.triton.{module} import TritonPythonModel  # noqa: F401
'''


def link_vision_files(engine_dir: Path, part: dict, platform: str, version_dir: Path) -> None:
    """Put the vision model file where Triton's native platform looks for it (relative symlinks, so the
    engine directory can move; the ONNX external-data file goes beside it under its own name)."""
    if platform == "onnxruntime_onnx":
        if part["backend"] != "ort":
            raise AerieError(f"--vision-platform onnxruntime_onnx needs an ONNX vision part; this engine's is "
                             f"{part['backend']}")
        main = Path(part["model"])
        names = {main: "model.onnx", **{Path(f): Path(f).name for f in part["files"] if Path(f) != main}}
    else:
        if part["backend"] != "tensorrt":
            raise AerieError("--vision-platform tensorrt_plan needs a TensorRT vision part: build the engine with "
                             "--backend tensorrt on the GPU machine")
        names = {Path(part["plan"]): "model.plan"}
    for source, name in names.items():
        target = version_dir / name
        target.symlink_to(os.path.relpath(engine_dir / source, version_dir))


def write_repository(engine_dir: str | Path, options: TritonOptions = TritonOptions(), force: bool = False) -> Path:
    """Write ENGINE_DIR/triton/ and return its path; every config.pbtxt is checked against Triton's schema."""
    engine_dir = Path(engine_dir)
    manifest = verify(engine_dir)  # the models will run these files: they must be the engine's
    if options.vision_platform not in VISION_PLATFORMS:
        raise AerieError(f"unknown vision platform {options.vision_platform!r}; "
                         f"choose one of {', '.join(VISION_PLATFORMS)}")
    if options.max_batch < 1 or options.vision_instances < 1:
        raise AerieError("max_batch and vision_instances must be at least 1")
    root = engine_dir / REPOSITORY
    if root.exists() or root.is_symlink():
        if not force:
            raise AerieError(f"{root} already exists; pass --force to write it again")
        remove(root)
    models = {
        "aerie": (entry_config(options), "entry_model"),
        "aerie_stream": (stream_config(options), "stream_model"),
        "aerie_vision": (vision_config(engine_dir, manifest, options),
                         "vision_model" if options.vision_platform == "python" else None),
    }
    for name, (config, module) in models.items():
        validate_config(config, f"{name}/config.pbtxt")
    work = engine_dir / f".{REPOSITORY}.partial"
    remove(work)
    work.mkdir()  # fails if anything (a symbolic link put there meanwhile) took the name again
    try:
        for name, (config, module) in models.items():
            version = work / name / "1"
            version.mkdir(parents=True)
            (work / name / "config.pbtxt").write_text(config)
            if module is not None:
                (version / "model.py").write_text(MODEL_PY.format(module=module))
        if options.vision_platform != "python":
            # work/ and triton/ sit at the same depth, so the relative links stay right after the rename.
            link_vision_files(engine_dir, manifest.part("vision"), options.vision_platform, work / "aerie_vision" / "1")
        work.rename(root)
    finally:
        remove(work)
    return root


def remove(path: Path) -> None:
    """Delete `path`, never what a symbolic link there points to."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
