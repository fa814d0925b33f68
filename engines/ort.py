"""The ONNX Runtime backend's parts of an engine directory (DESIGN.md):

    vision/           model.onnx (+ .data)          export/vision.py (in INT8: quant/vision.py)
    decoder/          model.onnx (+ .data)          export/decoder.py
    embed_tokens.npy  the token-embedding table      export/decoder.py

build.py writes tokenizer/ before and manifest.json after (engines/describe.py).
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable, Iterable

import torch

from export.decoder import export_decoder
from export.onnx_utils import remove_graph
from export.vision import export_vision
from models.vlm import VisionLanguageModel
from quant.modes import get_mode
from quant.ort_int4 import export_int4_decoder
from quant.quantize import Quantized
from runtime.preprocess import PreprocessSpec

DTYPES = {"fp32": "float32", "fp16": "float16"}
Step = Callable[[str], AbstractContextManager]  # `with step("export vision") as info:` times and shows a step


def build_ort_parts(model: VisionLanguageModel, out: Path, spec: PreprocessSpec, dtype: str, max_length: int | None,
                    step: Step, quantized: Quantized | None = None, lm_head: str | None = None) -> dict[str, dict]:
    """Export the decoder and the vision graph into `out`; returns the manifest's parts. With `quantized` in an
    INT4 mode the engine executes, the decoder is the INT4 graph built from its TensorRT-LLM checkpoint, its
    lm_head as `lm_head` says (other modes keep the float decoder here: their quantization runs on NVIDIA GPUs)."""
    np_dtype = DTYPES[dtype]
    int4 = quantized is not None and get_mode(quantized.mode).ort_int4
    with step("export decoder") as info:
        if int4:
            decoder = export_int4_decoder(model.decoder, quantized.trtllm_checkpoint, out, np_dtype, max_length,
                                          lm_head=lm_head or "float")
        else:
            decoder = export_decoder(model.decoder, out, dtype=np_dtype, max_length=max_length)
        info(f"{size(out / f for f in decoder['files'])}, {decoder['num_layers']} layers"
             + (f", INT4 linears, {lm_head or 'float'} lm_head" if int4 else "") + f", context {decoder['max_length']}")

    with step("export vision") as info:
        exported = export_vision(model, out / "vision", spec, getattr(torch, np_dtype))
        vision = {
            "backend": "ort",
            "dtype": np_dtype,
            "quantization": None,
            "files": [p.relative_to(out).as_posix() for p in exported.files],
            "model": "vision/model.onnx",
            **{k: v for k, v in exported.describe().items() if k != "graph"},
        }
        info(f"{size(exported.files)}, input {exported.input_shape}")
    return {"vision": vision, "decoder": decoder}


def vision_in_int8(out: Path, vision: dict) -> dict:
    """Replace the engine's vision graph under `out` by its INT8 version for the CPU (quant/vision.py); returns
    the vision part that describes it."""
    from quant.vision import quantize_vision_int8_cpu

    graph = out / vision["model"]
    scratch = Path(tempfile.mkdtemp(dir=out))
    try:
        written = quantize_vision_int8_cpu(graph, scratch / graph.name)
        remove_graph(graph)
        files = [shutil.move(str(f), graph.parent / f.name) for f in written]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**vision, "quantization": "int8", "files": [Path(f).relative_to(out).as_posix() for f in files]}


def size(paths: Iterable[Path]) -> str:
    total = sum(Path(p).stat().st_size for p in paths)
    return f"{total / 1e6:.1f} MB" if total < 1e9 else f"{total / 1e9:.2f} GB"
