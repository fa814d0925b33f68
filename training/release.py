"""Turn a trained stage directory into a release checkpoint: inference modules only (EVE's patch aligner
and CLIP teacher dropped, as `build.py` ignores them anyway), a chosen dtype, its tokenizer, and a check
that every linear layer's input size is a multiple of 128 (INT4-AWQ quantizes in groups of 128).

    python -m training.release --from out/runs/eve-tiny/stage3-sft --to examples/eve-tiny
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import SAFETENSORS, load_model, save_model
from runtime.arguments import Parser
from runtime.errors import AerieError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def linears_not_multiple_of(model: nn.Module, group: int = 128) -> list[str]:
    return [f"{name} ({m.in_features})" for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and m.in_features % group]


def copy_tokenizer(source: Path, target: Path) -> None:
    """The tokenizer files of a Hugging Face directory, next to the weights."""
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def release(source: str | Path, target: str | Path, dtype: str = "float32") -> Path:
    source, target = Path(source), Path(target)
    model = load_model(source, dtype=DTYPES[dtype])
    odd = linears_not_multiple_of(model)
    if odd:
        raise AerieError(f"{source}: linear inputs not a multiple of 128 (INT4-AWQ would refuse them): {', '.join(odd)}")
    target.mkdir(parents=True, exist_ok=True)
    save_model(model, target)
    copy_tokenizer(source, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m training.release",
                    description="Write an inference-only release checkpoint of a trained stage.")
    parser.add_argument("--from", dest="source", required=True, metavar="DIR", help="a stage directory written by training.train")
    parser.add_argument("--to", dest="target", required=True, metavar="DIR", help="the release directory (e.g. examples/eve-tiny)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the weights' type on disk")
    args = parser.parse_args(argv)
    try:
        out = release(args.source, args.target, args.dtype)
    except AerieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = (out / SAFETENSORS).stat().st_size
    print(f"{out}: {size / 1e6:.2f} MB of safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
