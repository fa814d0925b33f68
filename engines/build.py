"""Compile a checkpoint into an engine directory:  python build.py CHECKPOINT --out DIR [options]
(the installed command: `aerie build CHECKPOINT --out DIR`; build.py at the repository's root runs this module).

One linear path, each step shown with its time (docs/design.md):

    tokenizer -> load -> [calibration, quantize, checkpoints: --quant] -> the backend's parts (ort: export decoder,
    export vision; tensorrt: trtllm, tensorrt) -> reference -> write (the manifest, once) -> verify -> self-check

The model is loaded without a copy (memory-mapped weights in the checkpoint's dtype, models/checkpoint.py) and
computed in float32 a block at a time where float32 is needed. The reference is the PyTorch model's answers on a
Pipeline of its own (models/engines.py), taken while it is loaded; the self-check opens the engine once it is gone
and compares the two: identical greedy tokens for a float engine, the accuracy gate for a quantized one
(quant/report.py). The engine is built in a hidden directory beside DIR and moved into place only once the
self-check passed, so a failed build never leaves a half-written engine (or a broken old one) at DIR.

Exit codes: 0 built; 1 build failed; 2 bad arguments; 3 checkpoint missing, incomplete or of an unknown
family; 4 DIR exists (use --force); 5 not enough disk space; 6 self-check failed (engine differs from PyTorch,
or a quantized engine lost more accuracy than allowed).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import gc
import resource
import shutil
import sys
from pathlib import Path

from quant.cli import add_quant_arguments
from quant.modes import DEFAULT_LM_HEAD, LM_HEADS
from runtime.errors import AerieError, CheckpointError, TokenizerError

EXIT_FAILED, EXIT_CHECKPOINT, EXIT_EXISTS, EXIT_DISK, EXIT_SELF_CHECK = 1, 3, 4, 5, 6
BACKENDS = {"ort": ("fp32", "fp16"), "tensorrt": ("fp16", "bf16")}  # backend -> dtypes it builds
QUANT_DIR = "quantization"


class OutputExists(AerieError):
    pass


class NoDiskSpace(AerieError):
    pass


def program() -> str:
    """How the user started the build: `aerie build` from the installed command, else `build.py`."""
    return "aerie build" if Path(sys.argv[0]).name == "aerie" else "build.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=program(), description="Compile an Eagle / EVE checkpoint into an Aerie engine directory.",
        epilog="exit codes: 1 build failed, 2 bad arguments, 3 checkpoint missing/incomplete/unknown family, "
               "4 output exists (use --force), 5 no disk space, 6 self-check failed",
    )
    p.add_argument("checkpoint", type=Path, help="Hugging Face checkpoint directory (config.json + safetensors + tokenizer)")
    p.add_argument("--out", type=Path, required=True, help="engine directory to write")
    p.add_argument("--backend", choices=BACKENDS, default="ort",
                   help="ort: ONNX Runtime, any machine (default); tensorrt: TensorRT vision plan + TensorRT-LLM decoder")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"),
                   help="weights and activations (default: fp32 for ort, fp16 for tensorrt)")
    p.add_argument("--compute-capability", help="tensorrt: the GPU to build the vision plan for, e.g. SM89 "
                   "(default: the GPU present)")
    p.add_argument("--min-tiles", type=int, help="Eagle2/2.5: fewest tiles per image (default: the checkpoint's)")
    p.add_argument("--max-tiles", type=int, help="Eagle2/2.5: most tiles per image (default: the checkpoint's)")
    p.add_argument("--max-length", type=int, help="decoder context in tokens (default: the checkpoint's)")
    p.add_argument("--self-check-tokens", type=int, default=16, help="greedy tokens compared per prompt (default: 16)")
    p.add_argument("--no-self-check", action="store_true", help="skip comparing the engine with PyTorch (not recommended)")
    p.add_argument("--force", action="store_true", help="replace DIR if it is an existing engine directory")
    add_quant_arguments(p)
    g = p.add_argument_group("quantization report and gate (docs/quantization.md)")
    g.add_argument("--quant-vision", choices=("fp8", "int8", "none"),
                   help="the vision graph's quantization: on tensorrt, its Q/DQ graph; on ort, int8 makes the engine's "
                   "vision graph INT8 for the CPU's integer kernels, and fp8 (no CPU kernel) writes the Q/DQ graph for "
                   "TensorRT that the report measures (default: fp8 for fp8 and w4a8_awq, none for int4_awq)")
    g.add_argument("--lm-head", choices=list(LM_HEADS),
                   help="--quant int4_awq on ort: the lm_head's weights in the INT4 graph, rounded to 8 or 4 bits or "
                   f"kept float (default: {DEFAULT_LM_HEAD}; its accuracy is in the report)")
    g.add_argument("--eval-data", type=Path, help="synthetic-benchmark JSON for the accuracy report "
                   "(default: the synthetic test split)")
    g.add_argument("--eval-images", type=Path, help="image folder of --eval-data (default: beside it)")
    g.add_argument("--eval-limit", type=int, help="the report's first N questions (default: all 900 below 100M "
                   "parameters, 45 (5 per category) below 1B, 18 from 1B; --eval-limit 900 for the whole split)")
    g.add_argument("--max-accuracy-drop", type=float, default=2.0,
                   help="fail the build when accuracy falls more than this many points below fp32 (default: 2)")
    g.add_argument("--accept-accuracy-drop", action="store_true", help="keep the engine whatever the accuracy drop")
    args = p.parse_args(argv)
    if args.quant_vision and not args.quant:
        p.error("--quant-vision goes with --quant")
    if args.lm_head and (args.quant != "int4_awq" or args.backend != "ort"):
        p.error("--lm-head chooses the lm_head of the INT4 ONNX Runtime decoder: it goes with --quant int4_awq")
    if args.quant == "int4_awq" and args.backend == "ort":
        args.lm_head = args.lm_head or DEFAULT_LM_HEAD
    args.dtype = args.dtype or BACKENDS[args.backend][0]
    if args.dtype not in BACKENDS[args.backend]:
        p.error(f"--backend {args.backend} builds {' or '.join(BACKENDS[args.backend])}, not {args.dtype}")
    if args.compute_capability and args.backend != "tensorrt":
        p.error("--compute-capability goes with --backend tensorrt")
    for name in ("min_tiles", "max_tiles", "max_length", "self_check_tokens", "eval_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


def check_output(out: Path, force: bool) -> None:
    """DIR may be replaced only with --force, and only if it is an engine directory (or empty)."""
    if not out.exists():
        return
    if not force:
        raise OutputExists(f"{out} already exists; pass --force to replace it, or choose another --out")
    if not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file()):
        raise OutputExists(f"{out} exists and is not an Aerie engine directory; --force replaces only engines, "
                           "remove it yourself or choose another --out")


def check_disk(where: Path, needed: int) -> None:
    free = shutil.disk_usage(where).free
    if free < needed:
        raise NoDiskSpace(f"the engine needs about {needed / 1e9:.2f} GB and {where} has {free / 1e9:.2f} GB free; "
                          "free some space or choose another --out")


def engine_bytes(model, dtype: str, quant: str | None) -> int:
    """What the engine directory will take: every weight once in `dtype` (INT4 linears at 4.5 bits for an
    int4_awq ORT engine), the token table again, and with --quant the TensorRT-LLM and Hugging Face checkpoints
    (linears at 1 byte or 4.5 bits, the rest at 2 bytes); a 5% margin."""
    width = 4 if dtype == "fp32" else 2
    params = sum(p.numel() for p in model.parameters())
    linears = sum(p.numel() for layer in model.decoder.model.layers for n, p in layer.named_parameters()
                  if n.endswith("proj.weight"))
    embed = model.decoder.get_input_embeddings().weight.numel()
    if quant is None:
        total = (params + embed) * width
    else:
        quantized = linears * (0.5625 if quant != "fp8" else 1.0)
        engine = (quantized if quant == "int4_awq" else linears * width) + (params - linears + embed) * width
        total = engine + 2 * (quantized + (params - linears) * 2)
    return int(total * 1.05) + (1 << 20)


def tiling(model, options: "BuildOptions") -> "PreprocessSpec":
    """The model's preprocessing with --min-tiles / --max-tiles applied (Eagle2/2.5 only)."""
    overrides = options.spec_overrides()
    spec = model.preprocess_spec()
    if overrides and spec.kind != "dynamic_tiles":
        raise AerieError(f"--min-tiles/--max-tiles apply to tiled models (Eagle2/2.5), not {model.family}")
    try:
        return model.preprocess_spec(**overrides)
    except ValueError as e:
        raise AerieError(f"--min-tiles/--max-tiles: {e}") from None


def runs_here(backend: str) -> bool:
    """Whether an engine of `backend` can answer on this machine (the self-check needs it to)."""
    if backend == "ort":
        return True
    import torch

    return torch.cuda.is_available()


def build_parts(args: argparse.Namespace, model, work: Path, spec, step, quantized) -> tuple[dict[str, dict], list[str]]:
    """The backend's vision and decoder parts in `work`, and the steps left for the target machine."""
    if args.backend == "tensorrt":
        from engines.nvidia import NvidiaOptions, build_tensorrt_parts

        return build_tensorrt_parts(model, work, spec, args.dtype, args.max_length, step,
                                    NvidiaOptions(compute_capability=args.compute_capability), quantized,
                                    vision_quant(args))
    from engines.ort import build_ort_parts

    return build_ort_parts(model, work, spec, args.dtype, args.max_length, step, quantized, args.lm_head), []


def vision_quant(args: argparse.Namespace) -> str | None:
    """The vision graph's Q/DQ mode: --quant-vision, by default FP8 where the decoder's activations are FP8."""
    from quant.modes import get_mode

    if not args.quant or args.quant_vision == "none":
        return None
    return args.quant_vision or ("fp8" if get_mode(args.quant).fp8_activations else None)


def build(args: argparse.Namespace) -> Path:
    from engines.describe import BuildOptions, describe_engine
    from engines.ort import size
    from engines.selfcheck import SelfCheckError, check_engine_apart, reference_answers
    from models.checkpoint import load_model, read_config
    from models.engines import pipeline_on_model
    from models.registry import detect_family
    from models.tokenizer_build import convert_tokenizer
    from quant.cli import quant_options
    from quant.errors import AccuracyDropError
    from runtime.eval.progress import Steps
    from runtime.manifest import verify, write_manifest
    from runtime.tokenizer import Tokenizer

    checkpoint, out = args.checkpoint, args.out
    family = detect_family(read_config(checkpoint), str(checkpoint / "config.json"))
    for option, asked in (("tensorrt", args.backend == "tensorrt"), ("quant", bool(args.quant))):
        refusal = family.refusal(option) if asked else None
        if refusal:
            raise AerieError(refusal)
    check_output(out, args.force)
    options = BuildOptions(args.backend, args.dtype, args.min_tiles, args.max_tiles, args.max_length,
                           not args.no_self_check, args.compute_capability, args.quant, args.lm_head)
    quant = quant_options(args) if args.quant else None
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)  # left by an interrupted build of this DIR
    work.mkdir()
    print(f"building {family.name} engine ({args.backend}, {args.dtype}{', ' + args.quant if args.quant else ''}) "
          f"from {checkpoint} into {out}", flush=True)
    step = Steps()
    keep_work = False
    reference = quant_check = None
    try:
        with step("tokenizer") as info:
            convert_tokenizer(checkpoint, work / "tokenizer")
            tokenizer = Tokenizer.from_dir(work / "tokenizer")
            info("tokenizer.json")
        with step("load") as info:
            model = load_model(checkpoint)
            spec = tiling(model, options)
            parameters = sum(p.numel() for p in model.parameters())
            dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
            info(f"{parameters / 1e6:.1f}M parameters, {'/'.join(dtypes)} weights, memory-mapped")
            check_disk(out.parent, engine_bytes(model, args.dtype, args.quant))
        quantized = None
        if quant is not None:
            from quant.quantize import quantize_model

            quantized = quantize_model(model, tokenizer, checkpoint, work / QUANT_DIR, quant, step)
        parts, pending = build_parts(args, model, work, spec, step, quantized)
        qdq_vision = None
        kind = vision_quant(args) if args.backend == "ort" else None
        if kind == "int8":  # the CPU engine's own vision graph, run by ONNX Runtime's integer kernels
            from engines.ort import size, vision_in_int8

            with step("vision int8") as info:
                parts["vision"] = vision_in_int8(work, parts["vision"])
                info(f"{size(work / f for f in parts['vision']['files'])}, INT8 MatMuls for the CPU")
        elif kind:  # FP8, which no CPU kernel runs: the Q/DQ graph for TensorRT, measured by the report
            from quant.vision import qdq_counts, quantize_vision_graph

            with step(f"vision {kind}") as info:
                qdq_vision = work / QUANT_DIR / f"vision_{kind}" / "model.onnx"
                quantize_vision_graph(work / parts["vision"]["model"], qdq_vision, kind, quantized.pixels)
                info(f"{sum(qdq_counts(qdq_vision).values())} Q/DQ pairs, for TensorRT")
        if options.self_check and not runs_here(args.backend):
            print("  (self-check skipped: a tensorrt engine runs on an NVIDIA GPU only, and none is here)", flush=True)
        elif options.self_check and pending:
            print(f"  (self-check skipped: the engine is finished on the target machine: {'; '.join(pending)})", flush=True)
        elif options.self_check and quantized is not None:
            from quant.checks import QuantCheck

            quant_check = QuantCheck(args, model, tokenizer, spec, quantized, work / QUANT_DIR, parameters, qdq_vision)
            with step("reference") as info:
                info(quant_check.score_torch())
        elif options.self_check:
            with step("reference") as info:
                reference = reference_answers(pipeline_on_model(model, tokenizer, spec, checkpoint, max_batch=3),
                                              args.self_check_tokens)
                info(f"PyTorch greedy answers to {len(reference.answers)} prompts")
        record = None if quantized is None else {**quantized.record, "report": f"{QUANT_DIR}/report/report.json"}
        manifest = describe_engine(model, tokenizer, checkpoint, spec, parts, options, pending, record)
        with step("write") as info:
            write_manifest(work, manifest)
            info(f"manifest.json, {len(manifest.files)} files, {size(work / f for f in manifest.files)}")
        with step("verify") as info:
            verify(work)
            info(f"{len(manifest.files)} files match their sha256")
        del model  # the engine is checked without the PyTorch model in memory
        release_memory()
        if quant_check is not None or reference is not None:
            with step("self-check") as info:
                try:
                    if quant_check is not None:
                        info(quant_check.score_engine(work))
                    else:
                        info(check_engine_apart(work, reference, args.self_check_tokens).summary())
                except (SelfCheckError, AccuracyDropError) as e:
                    keep_work = True
                    raise type(e)(f"{e}; the engine is kept in {work} for inspection") from None
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NoDiskSpace(f"the disk filled up while writing the engine ({e.filename or out.parent}); free some space "
                              "and build again") from None
        raise
    finally:
        if quant_check is not None:
            quant_check.close()
        if work.exists() and not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"built {out} in {step.total():.1f} s, peak memory {peak_rss_gb():.2f} GB", flush=True)
    return out


def release_memory() -> None:
    """Give what the PyTorch phase freed back to the system (glibc keeps freed heap memory otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def peak_rss_gb() -> float:
    """The build's peak resident memory in GB (10^9 bytes, as bench/ reports it): this process's, or the
    self-check process's if that was larger."""
    kib = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return kib * 1024 / 1e9


def exit_code(error: AerieError) -> int:
    from engines.selfcheck import SelfCheckError
    from quant.errors import AccuracyDropError

    if isinstance(error, (CheckpointError, TokenizerError)):
        return EXIT_CHECKPOINT
    if isinstance(error, OutputExists):
        return EXIT_EXISTS
    if isinstance(error, NoDiskSpace):
        return EXIT_DISK
    if isinstance(error, (SelfCheckError, AccuracyDropError)):
        return EXIT_SELF_CHECK
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        build(args)
    except AerieError as e:
        print(f"{program()}: error: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print(f"{program()}: interrupted; nothing was written to the output directory", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
