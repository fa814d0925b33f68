"""Turn a trained stage directory into a release checkpoint: inference modules only (EVE's patch aligner
and CLIP teacher dropped, as `build.py` ignores them anyway), a chosen dtype, its tokenizer, and a check
that every linear layer's input size is a multiple of 128 (INT4-AWQ quantizes in groups of 128).

    python -m training.release --from out/runs/eve-tiny/stage3-sft --to out/release/eve-tiny

An existing release is replaced only with --force, and then as a whole (its model card too: it described
other weights), and only if it is a checkpoint directory or empty. The release is written beside the target
and renamed into place, so a failed release leaves the old one as it was; its files get the permissions the
umask gives (safetensors writes 0600).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
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


def release(source: str | Path, target: str | Path, dtype: str = "float32", force: bool = False) -> Path:
    source, target = Path(source), Path(target)
    check_target(target, force)
    model = load_model(source, dtype=DTYPES[dtype])
    odd = linears_not_multiple_of(model)
    if odd:
        raise AerieError(f"{source}: linear inputs not a multiple of 128 (INT4-AWQ would refuse them): {', '.join(odd)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        save_model(model, work)
        copy_tokenizer(source, work)
        give_default_permissions(work)
        replace(target, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def check_target(target: Path, force: bool) -> None:
    if not (target.exists() or target.is_symlink()):
        return
    if not force:
        raise AerieError(f"{target} already exists; pass --force to replace it (as a whole: its model card goes too)")
    if target.is_symlink() or not target.is_dir() or not ((target / "config.json").is_file() or not any(target.iterdir())):
        raise AerieError(f"{target} is not a checkpoint directory (no config.json) nor empty; refusing to replace it")


def give_default_permissions(directory: Path) -> None:
    """What the umask gives new files and directories: mkdtemp makes 0700, safetensors writes 0600."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def replace(target: Path, new: Path) -> None:
    """Put directory `new` at `target`, the old `target` (if any) removed once the new one is in place."""
    if not target.exists():
        new.rename(target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    old.rmdir()
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m training.release",
                    description="Write an inference-only release checkpoint of a trained stage.")
    parser.add_argument("--from", dest="source", required=True, metavar="DIR", help="a stage directory written by training.train")
    parser.add_argument("--to", dest="target", required=True, metavar="DIR", help="the release directory (e.g. examples/eve-tiny)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the weights' type on disk")
    parser.add_argument("--force", action="store_true", help="replace an existing release directory (as a whole)")
    args = parser.parse_args(argv)
    try:
        out = release(args.source, args.target, args.dtype, args.force)
    except AerieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = (out / SAFETENSORS).stat().st_size
    print(f"{out}: {size / 1e6:.2f} MB of safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
