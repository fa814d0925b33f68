"""The vision graph quantized for TensorRT: FP8 (E4M3) or INT8 Q/DQ nodes placed by nvidia-modelopt's ONNX
PTQ, calibrated on the same images as the decoder (ONNX Runtime on the CPU runs the calibration). And for the
CPU: the ONNX Runtime engine's own vision graph with its MatMuls in INT8 (`quantize_vision_int8_cpu`).

The Q/DQ graph is what a strongly typed TensorRT network builds FP8/INT8 layers from (engines/tensorrt.py);
everything between the Q/DQ pairs is fp16, as it would run on the GPU. ONNX Runtime's CPU provider runs it
too, with graph optimization at BASIC: its fusions reject float8 types (platform.md), so that is how the
accuracy report measures the graph here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from export.onnx_utils import graph_files, remove_graph

from .errors import QuantizationError

VISION_MODES = ("fp8", "int8")
# modelopt's calibrators: amax for FP8 (as TensorRT-LLM calibrates FP8), entropy for INT8 (TensorRT's default)
CALIBRATION = {"fp8": "max", "int8": "entropy"}


class PixelReader:
    """onnxruntime's CalibrationDataReader protocol over preprocessed images, one image (its tiles) per step,
    so EVE's images keep their own sizes."""

    def __init__(self, input_name: str, pixels: Sequence[np.ndarray]):
        self.feeds = [{input_name: np.ascontiguousarray(p, np.float32)} for p in pixels]
        self.position = 0

    def get_next(self) -> dict | None:
        if self.position == len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def get_first(self) -> dict:
        return self.feeds[0]

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.feeds)


@contextlib.contextmanager
def quiet_onnx_ptq(verbose: bool):
    """modelopt's ONNX PTQ logs every step and ORT's calibrator draws progress bars; keep the build log short."""
    if verbose:
        yield
        return
    logger = logging.getLogger("modelopt.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def quantize_vision_graph(source: str | Path, out: str | Path, mode: str, pixels: Sequence[np.ndarray],
                          high_precision: str = "fp16", verbose: bool = False) -> list[Path]:
    """Write the Q/DQ graph of `source` (a vision model.onnx) to `out`; returns the files written."""
    import onnx

    if mode not in VISION_MODES:
        raise QuantizationError(f"vision quantization {mode!r}: choose one of {', '.join(VISION_MODES)}")
    if not pixels:
        raise QuantizationError("vision calibration needs at least one image; the calibration data has none")
    from modelopt.onnx.quantization import quantize

    source, out = Path(source), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_graph(out)
    input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    # modelopt rewrites its input graph in place (shape inference); work on a copy so the engine's own
    # vision graph keeps the bytes its manifest checksums.
    with tempfile.TemporaryDirectory() as scratch, quiet_onnx_ptq(verbose):
        for file in graph_files(source):
            shutil.copy2(file, scratch)
        quantize(str(Path(scratch) / source.name), quantize_mode=mode,
                 calibration_data_reader=PixelReader(input_name, pixels), calibration_method=CALIBRATION[mode],
                 calibration_eps=["cpu"], output_path=str(out), high_precision_dtype=high_precision,
                 log_level="INFO" if verbose else "ERROR")
    if not out.is_file():
        raise QuantizationError(f"modelopt wrote no quantized graph for {source}; run with --verbose to see why")
    return graph_files(out)


def quantize_vision_int8_cpu(source: str | Path, out: str | Path) -> list[Path]:
    """Write `source` (a vision model.onnx) with its MatMuls in INT8 for ONNX Runtime's integer kernels on the CPU
    (VNNI where the CPU has it) to `out`; returns the files written. Weights int8 per output channel,
    activations quantized per call (ONNX Runtime's dynamic quantization): no calibration, each image its own
    range. The accuracy report's engine row measures the result and the gate holds it."""
    from runtime.backends.ort_session import import_onnxruntime

    import_onnxruntime()  # its one-line error when neither ONNX Runtime package is installed
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, out = Path(source), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_graph(out)
    with quiet_onnx_ptq(False):
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"], use_external_data_format=True)
    if not out.is_file():
        raise QuantizationError(f"ONNX Runtime wrote no INT8 graph for {source}")
    return graph_files(out)


def qdq_counts(path: str | Path) -> dict[str, int]:
    """How many QuantizeLinear nodes the graph has, by the type they quantize to (float8e4m3fn, int8)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    zero_points = {init.name: init.data_type for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            kind = onnx.TensorProto.DataType.Name(zero_points.get(node.input[2], 0)).lower()
            counts[kind] = counts.get(kind, 0) + 1
    return counts


class QdqVisionEngine:
    """A Q/DQ vision graph in ONNX Runtime on the CPU (optimization BASIC): the `VisionEngine` protocol."""

    def __init__(self, path: str | Path, threads: int | None = None):
        from runtime.backends.ort_session import import_onnxruntime

        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        embeds = self.session.run(None, {self.input_name: np.ascontiguousarray(pixel_values, np.float32)})[0]
        return embeds.reshape(-1, embeds.shape[-1]).astype(np.float32)
