"""The manifest of a built engine, whatever its backend: what build.py writes last (runtime/manifest.py)."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from models.engines import describe_model
from models.vlm import VisionLanguageModel
from runtime.manifest import Manifest, digest_files
from runtime.preprocess import PreprocessSpec
from runtime.tokenizer import Tokenizer

VERSIONED = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu")  # whichever ORT is installed


@dataclass(frozen=True)
class BuildOptions:
    """What build.py's flags choose; recorded in the manifest's build flags."""

    backend: str = "ort"
    dtype: str = "fp32"
    min_tiles: int | None = None
    max_tiles: int | None = None
    max_length: int | None = None
    self_check: bool = True
    compute_capability: str | None = None  # tensorrt only
    quant: str | None = None  # the --quant mode
    lm_head: str | None = None  # the INT4 ORT decoder's lm_head: int8, int4 or float

    def spec_overrides(self) -> dict:
        return {k: v for k, v in (("min_tiles", self.min_tiles), ("max_tiles", self.max_tiles)) if v is not None}


def versions() -> dict:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def source_digest(checkpoint: Path) -> str:
    """One sha256 over every file the checkpoint directory holds at its top level (config, weights, tokenizer)."""
    return digest_files(checkpoint, [p.name for p in checkpoint.iterdir() if p.is_file() and not p.name.startswith(".")])


def describe_engine(model: VisionLanguageModel, tokenizer: Tokenizer, checkpoint: Path, spec: PreprocessSpec,
                    parts: dict[str, dict], options: BuildOptions, pending: Sequence[str] = (),
                    quantization: dict | None = None) -> Manifest:
    """The manifest for `parts` (vision, decoder) built from `model`; its files are filled in when written.
    `quantization`: what `--quant` did (quant/quantize.py's record, the report's gate and files)."""
    return Manifest(
        source={"path": str(checkpoint), "digest": source_digest(checkpoint)},
        parts=parts,
        **describe_model(model, tokenizer, spec),
        build={
            "flags": asdict(options),
            "versions": versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            **({"quantization": quantization} if quantization else {}),
        },
        pending=list(pending),
    )
