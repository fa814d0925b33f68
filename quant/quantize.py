"""Quantize a checkpoint: calibrate on image+text samples, quantize the decoder a layer at a time, write its every
form. `python -m quant CHECKPOINT --mode int4_awq --out Q/` runs it alone; `build.py --quant` runs it between
loading the model and exporting it, and the builders consume what it writes:

    Q/
      trtllm_checkpoint/   config.json + rank0.safetensors (FP8, W4A16_AWQ or W4A8_AWQ): trtllm-build's input, and
                           what the ONNX Runtime INT4 decoder and the fake-quant PyTorch decoder are made from
      hf_checkpoint/       the whole model, language model quantized, hf_quant_config.json (vLLM, SGLang)
      calibration.json     the mode, the options and the calibration data: what was measured on what

docs/quantization.md tells the story.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from runtime.tokenizer import Tokenizer

from .calibration import calibration_set
from .errors import QuantizationError
from .hf import write_quantized_hf_checkpoint
from .layerwise import SEARCH_TOKENS, check_int4_widths, quantize_decoder
from .modes import check_group_size, get_mode
from .trtllm import write_quantized_trtllm_checkpoint

TRTLLM_DIR = "trtllm_checkpoint"
HF_DIR = "hf_checkpoint"
RECORD = "calibration.json"
Step = Callable[[str], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class QuantOptions:
    mode: str
    calib_data: Path | None = None  # LLaVA-format JSON; None: the synthetic benchmark's val split, generated
    calib_images: Path | None = None
    calib_samples: int = 32
    calib_max_length: int = 512
    calib_text_only: bool = False  # leave the image rows out of the decoder's calibration (for comparison only)
    search_tokens: int = SEARCH_TOKENS  # calibration rows AWQ's scale search measures its error on, per linear group
    kv_cache_fp8: bool = False
    group_size: int = 128
    checkpoint_dtype: str = "float16"
    progress: bool = True

    def check(self) -> None:
        mode = get_mode(self.mode)
        if mode.int4:
            check_group_size(self.group_size)
        for name in ("calib_samples", "calib_max_length", "search_tokens"):
            if getattr(self, name) < 1:
                raise QuantizationError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


@dataclass
class Quantized:
    """What a quantization wrote, and the calibration images' pixels (the vision graph is calibrated on them)."""

    directory: Path
    mode: str
    record: dict
    pixels: list[np.ndarray] = field(default_factory=list)

    @property
    def trtllm_checkpoint(self) -> Path:
        return self.directory / TRTLLM_DIR

    @property
    def hf_checkpoint(self) -> Path:
        return self.directory / HF_DIR


@contextlib.contextmanager
def calibration_file(options: QuantOptions, scratch: Path) -> Iterator[tuple[Path, Path | None, str]]:
    """(LLaVA JSON, image folder, description): the user's, or the synthetic val split generated into a scratch
    folder (deterministic: the synthetic benchmark's val split of seed 0)."""
    if options.calib_data is not None:
        yield options.calib_data, options.calib_images, str(options.calib_data)
        return
    from runtime.eval.synthetic import generate

    with tempfile.TemporaryDirectory(prefix=".aerie-calibration-", dir=scratch) as tmp:
        generate(tmp, train=0, val=options.calib_samples, test=0, seed=0, progress=False)
        yield Path(tmp) / "val.json", None, "synthetic val split (seed 0)"


def quantize_model(model, tokenizer: Tokenizer, checkpoint: Path, out: Path, options: QuantOptions,
                   step: Step) -> Quantized:
    """Calibrate, quantize and write `out` (see the module docstring); `model` is left as it was."""
    options.check()
    mode = get_mode(options.mode)
    if mode.int4:
        check_int4_widths(model.decoder, options.group_size)  # before any calibration time is spent
    out.mkdir(parents=True, exist_ok=True)
    with step("calibration") as info, calibration_file(options, out) as (data, images, source):
        calibration = calibration_set(model, tokenizer, data, images, options.calib_samples, options.calib_max_length,
                                      options.progress, options.calib_text_only)
        calibration.source = source
        c = calibration.describe()
        info(f"{c['samples']} samples, {c['tokens']} tokens ({c['image_tokens']} from {c['images']} images)")
    with step("quantize") as info:
        quantized = quantize_decoder(model.decoder, mode, calibration, options.group_size, options.kv_cache_fp8,
                                     options.search_tokens, options.progress)
        info(f"{mode.quant_algo}, {len(quantized.layers)} layers" + (", FP8 KV cache" if options.kv_cache_fp8 else ""))
    with step("trtllm ckpt") as info:
        trt_dir = write_quantized_trtllm_checkpoint(model.decoder, quantized, out / TRTLLM_DIR, options.checkpoint_dtype)
        del quantized  # from here on the checkpoint's memory-mapped tensors are the quantized decoder
        info(f"{folder_bytes(trt_dir) / 1e6:.1f} MB")
    with step("hf checkpoint") as info:
        hf_dir = write_quantized_hf_checkpoint(model, trt_dir, checkpoint, out / HF_DIR, options.checkpoint_dtype)
        info(f"{folder_bytes(hf_dir) / 1e6:.1f} MB with hf_quant_config.json")
    record = {"mode": mode.name, "quant_algo": mode.quant_algo,
              "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
              "calibration": calibration.describe(), "outputs": {"trtllm_checkpoint": TRTLLM_DIR, "hf_checkpoint": HF_DIR}}
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return Quantized(out, mode.name, record, calibration.pixels)


def folder_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
