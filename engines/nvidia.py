"""`--backend tensorrt`: the vision graph as a TensorRT plan, the decoder as a TensorRT-LLM checkpoint and engine.

    vision/   model.onnx (kept: a target with another TensorRT rebuilds from it), model.plan, model.plan.json
    decoder/  trtllm_checkpoint/ (config.json, rank0.safetensors; quantized with --quant), build_engine.sh, README.md,
              trtllm_engine/ (built here only where TensorRT-LLM is installed; else a pending step)

`build_tensorrt_parts` is the counterpart of engines/ort.py's `build_ort_parts`: build.py writes tokenizer/
before and the manifest (engines/describe.py, with the pending steps) after.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from export.trtllm import write_trtllm_checkpoint
from export.vision import export_vision
from models.vlm import VisionLanguageModel
from quant.quantize import Quantized
from quant.vision import quantize_vision_graph
from runtime.errors import AerieError
from runtime.preprocess import PreprocessSpec, max_image_tokens

from .ort import Step
from .tensorrt import build_target, build_vision_part
from .trtllm import CHECKPOINT_DIR, DECODER_DIR, DecoderSizing, build_trtllm_decoder

DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class NvidiaOptions:
    """The flags only the NVIDIA backend has."""

    compute_capability: str | None = None  # TensorRT-RTX's AOT target (SM89, ...); None: the GPU present
    max_batch: int = 4
    images_per_request: int = 1
    max_new_tokens: int = 512


def decoder_sizing(model: VisionLanguageModel, spec: PreprocessSpec, max_length: int | None,
                   options: NvidiaOptions) -> DecoderSizing:
    """TensorRT-LLM limits from the context length (None: the model's positions): what the images and the
    answer leave is the text's."""
    context = max_length or model.decoder.config.max_position_embeddings
    tokens = max_image_tokens(spec)
    text = context - options.images_per_request * tokens - options.max_new_tokens
    if text < 1:
        raise AerieError(f"a context of {context} tokens holds no text after {options.images_per_request} image(s) of up "
                         f"to {tokens} tokens and {options.max_new_tokens} new tokens; raise --max-length or lower "
                         "the images per request, the tiling or --max-new-tokens")
    return DecoderSizing(options.max_batch, options.images_per_request, tokens, text, options.max_new_tokens)


def build_tensorrt_parts(model: VisionLanguageModel, out: Path, spec: PreprocessSpec, dtype: str, max_length: int | None,
                         step: Step, options: NvidiaOptions = NvidiaOptions(), quantized: Quantized | None = None,
                         vision_quant: str | None = None) -> tuple[dict[str, dict], list[str]]:
    """Write vision/ and decoder/ into `out`; returns the manifest's parts and the steps left pending.

    `dtype` is fp16 or bf16. The decoder's TensorRT-LLM checkpoint is the model's (export/trtllm.py), or with
    `quantized` the quantizer's (moved into place: trtllm-build builds FP8 / INT4-AWQ engines from it). With
    `vision_quant` (fp8, int8) the plan is built from the vision graph with Q/DQ nodes, calibrated on the
    quantization's images."""
    if dtype not in DTYPES:
        raise AerieError(f"--backend tensorrt builds {' or '.join(DTYPES)} engines, not {dtype}; pass --dtype fp16 or bf16")
    sizing = decoder_sizing(model, spec, max_length, options)
    build_target(options.compute_capability)  # a missing or unknown target fails before any work
    with step("trtllm") as info:
        checkpoint = out / DECODER_DIR / CHECKPOINT_DIR
        if quantized is None:
            write_trtllm_checkpoint(model.decoder, checkpoint, DTYPES[dtype])
        else:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(quantized.trtllm_checkpoint), checkpoint)
        decoder, pending = build_trtllm_decoder(out, sizing)
        info(f"{decoder['quantization'] or 'unquantized'} checkpoint; {sizing.max_multimodal_len} table rows, context "
             f"{sizing.max_seq_len}; " + ("engine build pending (no TensorRT-LLM here)" if pending else "engine built"))
    with step("tensorrt") as info:
        if vision_quant is None:
            export_vision(model, out / "vision", spec, getattr(torch, DTYPES[dtype]))
        else:
            with tempfile.TemporaryDirectory(dir=out) as scratch:
                exported = export_vision(model, Path(scratch), spec)
                quantize_vision_graph(exported.files[0], out / "vision" / "model.onnx", vision_quant,
                                      quantized.pixels if quantized else [])
        vision = build_vision_part(out, spec, options.compute_capability)
        info(f"{vision['quantization'] or vision['dtype']} plan for {vision['compute_capability']} ({vision['tensorrt']['product']} "
             f"{vision['tensorrt']['version']})")
    return {"vision": vision, "decoder": decoder}, pending
