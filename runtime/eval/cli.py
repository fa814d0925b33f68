"""`python -m runtime.eval ENGINE_DIR --benchmark NAME --data PATH`: score one engine directory, or
`python -m runtime.eval --server http://host:port/v1 ...`: score any OpenAI-compatible server with the
same prompts and metrics.

Writes <out>/answers.jsonl (resumed when run again) and <out>/results.json, and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..errors import AerieError
from .benchmarks import BENCHMARKS
from .compare import folder_name, run_record
from .predictors import ServerPredictor, engine_predictor
from .report import score_table, write_json
from .runner import greedy, run_benchmark


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options every evaluation command shares (this CLI and evaluate.py)."""
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS), help="see docs/accuracy.md for each one's files")
    p.add_argument("--data", required=True, help="the benchmark's annotation file or folder, or a LLaVA question .jsonl")
    p.add_argument("--images", help="image folder (default: the benchmark's usual place next to --data)")
    p.add_argument("--limit", type=int, help="only the first N questions (default: all)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="questions handed to the backend at once (a server gets them as concurrent requests; default: 1)")
    p.add_argument("--max-new-tokens", type=int, help="default: the benchmark's (128; 32 for synthetic)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"),
                   help="the servers' API key (default: $OPENAI_API_KEY, else none)")


def sampling_from(args: argparse.Namespace):
    """Greedy decoding, as the papers evaluate."""
    return greedy(args.max_new_tokens or BENCHMARKS[args.benchmark].max_new_tokens)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.eval",
                                description="Score an engine directory, or an OpenAI-compatible server, on a benchmark.")
    p.add_argument("engine_dir", nargs="?", help="an engine directory written by build.py (or give --server)")
    p.add_argument("--server", metavar="URL", help="an OpenAI-compatible server's base URL, e.g. http://host:8000/v1")
    p.add_argument("--model", help="the server's model to score (default: the one model it serves)")
    add_run_arguments(p)
    p.add_argument("--name", help="the backend's name in reports (default: the engine folder's name, or the server's model)")
    p.add_argument("--out", help="where answers.jsonl and results.json go (default: out/eval/<name>/<benchmark>)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the engine runs (default: cpu)")
    args = p.parse_args(argv)
    if (args.engine_dir is None) == (args.server is None):
        p.error("give an engine directory or --server URL (one of them)")
    params = sampling_from(args)
    try:
        if args.server:
            predictor = ServerPredictor(args.server, args.model, args.name, api_key=args.api_key)
        else:
            name = args.name or Path(args.engine_dir).resolve().name
            predictor = engine_predictor(args.engine_dir, name, args.device, max_batch=args.batch_size)
        out = Path(args.out) if args.out else Path("out") / "eval" / folder_name(predictor.name) / args.benchmark
        start = time.monotonic()
        score = run_benchmark(predictor, args.benchmark, args.data, images=args.images, results=out / "answers.jsonl",
                              limit=args.limit, batch_size=args.batch_size, params=params, progress=not args.quiet)
    except AerieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(out / "results.json", run_record(score, predictor.name, args.data, params, time.monotonic() - start))
    print(score_table(score))
    print(f"answers: {out / 'answers.jsonl'}\nresults: {out / 'results.json'}")
    return 0
