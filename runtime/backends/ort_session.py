"""ONNX Runtime sessions as every ORT backend opens them: the device's providers, checked, and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import AerieError

Device = Literal["cpu", "cuda"]
INSTALL_ORT = ("pip install 'aerie[cpu]' on a machine without a GPU, or 'aerie[gpu]' for CUDA; one of the two: "
               "they share the onnxruntime package folder")
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def import_onnxruntime():
    """The onnxruntime module, or an AerieError naming the extra that installs it."""
    try:
        import onnxruntime  # here, not at import time: `import runtime` stays cheap
    except ImportError:
        raise AerieError(f"ONNX Runtime is not installed: {INSTALL_ORT}") from None
    # Both packages installed, then one uninstalled, leaves their shared folder half-removed.
    if not hasattr(onnxruntime, "InferenceSession"):
        raise AerieError("ONNX Runtime's install is broken (onnxruntime and onnxruntime-gpu were both installed and one "
                         f"removed): pip uninstall both, then {INSTALL_ORT}")
    return onnxruntime


def open_session(path: str | Path, device: Device = "cpu", threads: int | None = None):
    """An InferenceSession for `path` on `device`; `threads` caps the intra-op pool (None: all cores)."""
    ort = import_onnxruntime()
    if device not in PROVIDERS:
        raise AerieError(f"unknown device {device!r}; use one of {', '.join(PROVIDERS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # a missing CUDA library is reported below, in one line
    try:
        session = ort.InferenceSession(str(path), options, providers=PROVIDERS[device])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types with no common base
        raise AerieError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]}); rebuild the engine") from None
    # onnxruntime-gpu silently falls back to the CPU when CUDA can't start (platform.md): say so.
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise AerieError(f"{path}: CUDA was asked for but ONNX Runtime could not start it; check the driver or use --device cpu")
    return session
