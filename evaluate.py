"""Compare backends on one benchmark: the PyTorch oracle, engine directories and running servers.

    python evaluate.py --benchmark synthetic --data data/synthetic/test.json \\
        --torch examples/eve-tiny --engine out/eve-tiny --engine int4=out/eve-tiny-int4 --out reports/eve-tiny
    python evaluate.py --benchmark mmbench --data MMBench/mmbench_dev_20230712.tsv \\
        --server aerie=http://edge:8000/v1 --server vllm=http://ref:8000/v1#NVEagle/Eagle-X5-7B --out reports/mmbench

writes reports/eve-tiny/<backend>/{answers.jsonl,results.json} and comparison.{md,png,json}, prints the
table, and resumes from the answers files when run again. The first backend is the reference (the
oracle when --torch is given). This driver sits beside build.py because it imports both the runtime
(engines) and models (the oracle); the metrics and the runner live in runtime/eval.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.errors import AerieError
from runtime.eval.cli import add_run_arguments, sampling_from
from runtime.eval.compare import compare_backends
from runtime.eval.predictors import PipelinePredictor, Predictor, ServerPredictor, engine_predictor


TORCH_DTYPES = ("float32", "bfloat16", "float16")


def torch_predictor(checkpoint: str | Path, name: str = "torch", dtype: str = "float32", device: str = "cpu") -> Predictor:
    """The PyTorch model (models.engines.torch_pipeline) as a predictor."""
    import torch

    from models.engines import torch_pipeline

    return PipelinePredictor(name, torch_pipeline(checkpoint, dtype=getattr(torch, dtype), device=device))


def named(spec: str, default: str | None = None) -> tuple[str, str]:
    """"NAME=PATH" -> (NAME, PATH); a bare PATH is named `default`, or after its folder."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep else (default or Path(spec).name, spec)


def server_predictor(spec: str, api_key: str) -> Predictor:
    """"[NAME=]URL[#MODEL]" -> a ServerPredictor (a URL's fragment never reaches the server, so it can name the model)."""
    name, sep, rest = spec.partition("=")
    if not sep or "://" in name:
        name, rest = "", spec
    url, _, model = rest.partition("#")
    return ServerPredictor(url, model or None, name or None, api_key=api_key)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p)
    p.add_argument("--torch", action="append", default=[], metavar="[NAME=]CHECKPOINT",
                   help="a checkpoint run by the PyTorch oracle (repeatable)")
    p.add_argument("--torch-dtype", default="float32", metavar="DTYPE[,DTYPE...]",
                   help=f"the oracle's dtype, or several comma-separated: one backend each ({', '.join(TORCH_DTYPES)})")
    p.add_argument("--engine", action="append", default=[], metavar="[NAME=]ENGINE_DIR", help="an engine directory (repeatable)")
    p.add_argument("--server", action="append", default=[], metavar="[NAME=]URL[#MODEL]",
                   help="an OpenAI-compatible server (repeatable); MODEL defaults to the one it serves, NAME to the model")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the oracle and the engines run")
    args = p.parse_args(argv)
    if not args.torch and not args.engine and not args.server:
        p.error("give at least one --torch CHECKPOINT, --engine ENGINE_DIR or --server URL")
    args.torch_dtype = [d.strip() for d in args.torch_dtype.split(",") if d.strip()]
    unknown = [d for d in args.torch_dtype if d not in TORCH_DTYPES]
    if unknown or not args.torch_dtype:
        p.error(f"--torch-dtype: {', '.join(unknown) or 'empty'}; use {', '.join(TORCH_DTYPES)}")
    return args


def oracle_backends(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(name, checkpoint, dtype) per --torch checkpoint and dtype; the dtype joins the name when there are several."""
    single = "torch" if len(args.torch) == 1 else None
    several = len(args.torch_dtype) > 1
    return [(f"{name}-{dtype}" if several else name, path, dtype)
            for name, path in (named(s, single) for s in args.torch) for dtype in args.torch_dtype]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        predictors = [torch_predictor(path, name, dtype, args.device) for name, path, dtype in oracle_backends(args)]
        predictors += [engine_predictor(path, name, args.device, max_batch=args.batch_size)
                       for name, path in map(named, args.engine)]
        predictors += [server_predictor(spec, args.api_key) for spec in args.server]
        compare_backends(predictors, args.benchmark, args.data, args.out, images=args.images, limit=args.limit,
                         batch_size=args.batch_size, params=sampling_from(args), progress=not args.quiet)
    except AerieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "comparison.md").read_text(encoding="utf-8"))
    print(f"plot: {Path(args.out) / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
