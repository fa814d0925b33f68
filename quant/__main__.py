"""`python -m quant CHECKPOINT --mode int4_awq --out Q/`: quantize a checkpoint into Q/ (quant/quantize.py says
what it writes); `build.py --quant` does the same inside a build and compiles the result."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli import add_quant_arguments, quant_options


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quant", description="Quantize an Eagle / EVE checkpoint's decoder: "
                                "TensorRT-LLM and Hugging Face checkpoints and a calibration record.")
    p.add_argument("checkpoint", type=Path, help="Hugging Face checkpoint directory")
    p.add_argument("--out", type=Path, required=True, help="directory to write (must not exist)")
    add_quant_arguments(p, required=True)
    args = p.parse_args(argv)
    from runtime.errors import AerieError

    try:
        run(args)
    except AerieError as e:
        print(f"python -m quant: error: {e}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> None:
    import tempfile

    from models.checkpoint import load_model, read_config
    from models.registry import detect_family
    from models.tokenizer_build import convert_tokenizer
    from runtime.tokenizer import Tokenizer

    from .errors import QuantizationError
    from .quantize import quantize_model
    from runtime.eval.progress import Steps

    refusal = detect_family(read_config(args.checkpoint), str(args.checkpoint / "config.json")).refusal("quant")
    if refusal:
        raise QuantizationError(refusal)
    if args.out.exists():
        raise QuantizationError(f"{args.out} already exists; choose another --out or remove it")
    options = quant_options(args)
    step = Steps()
    print(f"quantizing {args.checkpoint} ({options.mode}) into {args.out}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        with step("load") as info:
            tokenizer = Tokenizer.from_dir(convert_tokenizer(args.checkpoint, Path(tmp) / "tokenizer"))
            model = load_model(args.checkpoint)
            info(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
        quantize_model(model, tokenizer, args.checkpoint, args.out, options, step)
    print(f"wrote {args.out} in {step.total():.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
