"""Train a model by a recipe:  torchrun --nproc_per_node N -m training.train --recipe R --data D --out O

One process (`python -m training.train ...`) works too. Each stage writes `O/stage<N>-<name>/`, a
Hugging Face checkpoint directory; `--resume` continues from the last checkpoint of an interrupted run.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from runtime.arguments import Parser
from runtime.errors import AerieError

from .recipes import load_recipe
from .trainer import RunOptions, train


def parse_stages(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m training.train",
                    description="Train an Eagle or EVE model by a recipe (torchrun for several processes).")
    parser.add_argument("--recipe", required=True, metavar="TOML", help="a recipe file (training/recipes/)")
    parser.add_argument("--data", required=True, metavar="DIR", help="directory the recipe's data files are relative to")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (one sub-directory per stage)")
    parser.add_argument("--image-folder", metavar="DIR", help="where image paths in the data resolve (default: beside each data file)")
    parser.add_argument("--init", metavar="CHECKPOINT", help="checkpoint to start from (default: a fresh model of the recipe's [model])")
    parser.add_argument("--stages", type=parse_stages, default=(), metavar="N,N", help="which stages, e.g. 1,2 (default: all)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record or image instead of skipping it")
    parser.add_argument("--fsdp", action="store_true", help="shard parameters with FSDP instead of replicating (DDP)")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="torch threads per process (default: 0, torch's choice)")
    parser.add_argument("--stop-after", type=int, default=0, metavar="STEPS", help="stop each stage after this many steps, resumable (default: 0, run every step)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a stage field of the recipe, e.g. --set max_steps=10 or --set stage.2.lr=1e-4")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        recipe = load_recipe(args.recipe, args.set)
        opts = RunOptions(
            recipe=recipe, data=Path(args.data), out=Path(args.out),
            image_folder=Path(args.image_folder) if args.image_folder else None,
            init=Path(args.init) if args.init else None, stages=args.stages, resume=args.resume, strict=args.strict,
            fsdp=args.fsdp, threads=args.threads, stop_after=args.stop_after,
        )
        final = train(opts)
    except AerieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
