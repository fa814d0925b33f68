"""The quantization flags `python -m quant` and `build.py --quant` share."""

from __future__ import annotations

import argparse
from pathlib import Path

from .modes import BLOCK_SIZES, MODES
from .quantize import QuantOptions


def add_quant_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("quantization (docs/quantization.md)")
    flag = "--mode" if required else "--quant"
    g.add_argument(flag, dest="quant", choices=tuple(MODES), required=required,
                   help="quantize the decoder: " + ", ".join(MODES))
    g.add_argument("--calib-data", type=Path,
                   help="LLaVA-format JSON with images to calibrate on (default: the synthetic benchmark's val split, "
                   "generated)")
    g.add_argument("--calib-images", type=Path,
                   help="image folder of --calib-data (default: beside it)")
    g.add_argument("--calib-samples", type=int, default=QuantOptions.calib_samples,
                   help="calibration samples, taken evenly across the file (default: %(default)s)")
    g.add_argument("--calib-max-length", type=int, default=QuantOptions.calib_max_length,
                   help="tokens per calibration sample (default: %(default)s)")
    g.add_argument("--calib-text-only", action="store_true", help="calibrate the decoder on the prompts without their "
                   "image rows, as text-only toolchains do (to measure the difference; not recommended)")
    g.add_argument("--search-tokens", type=int, default=QuantOptions.search_tokens,
                   help="calibration rows AWQ's scale search measures the error on, per linear group "
                   "(default: %(default)s)")
    g.add_argument("--kv-cache-fp8", action="store_true", help="FP8 KV cache in the TensorRT-LLM checkpoint")
    g.add_argument("--awq-group-size", type=int, choices=BLOCK_SIZES, default=QuantOptions.group_size,
                   help="INT4 group size (default: %(default)s)")


def quant_options(args: argparse.Namespace) -> QuantOptions:
    """The options the flags chose (refusing impossible values with a QuantizationError)."""
    options = QuantOptions(mode=args.quant, calib_data=args.calib_data, calib_images=args.calib_images,
                           calib_samples=args.calib_samples, calib_max_length=args.calib_max_length,
                           calib_text_only=args.calib_text_only, search_tokens=args.search_tokens,
                           kv_cache_fp8=args.kv_cache_fp8, group_size=args.awq_group_size)
    options.check()
    return options
