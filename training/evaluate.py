"""Exact-match accuracy per category: the PyTorch model (`models.engines.torch_pipeline`, greedy) answers
each question of a LLaVA JSON split; an answer counts by the synthetic benchmark's exact match
(`runtime.eval.exact_match`: trimmed, a final period dropped, whitespace collapsed, case ignored).

    python -m training.evaluate --model examples/eve-tiny --data out/synth/test.json
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from runtime.arguments import Parser
from runtime.eval.exact_match import exact_match
from runtime.sampling import SamplingParams

from .llava import SkipLog, read_records


def evaluate(model_dir: str | Path, data: str | Path, image_folder: str | Path | None = None, limit: int = 0,
             max_new_tokens: int = 8, show: int = 0) -> dict:
    """{"categories": {name: {"correct", "total", "accuracy"}}, "overall": ..., "seconds": ...}."""
    from models.engines import torch_pipeline

    pipe = torch_pipeline(model_dir)
    records = read_records(data, image_folder, SkipLog())
    if limit:
        records = records[:limit]
    params = SamplingParams(max_new_tokens=max_new_tokens)
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    started = time.perf_counter()
    for record in records:
        # The question as a user would ask it: the image attached, the placeholder put by the runtime.
        question = record.turns[0][1].replace("<image>", "").strip()
        images = [record.image] if record.image is not None else []
        answer = pipe.generate(question, images, params)
        ok = bool(exact_match(answer, [record.turns[1][1]]))
        category = record.category or "all"
        correct[category] += ok
        total[category] += 1
        if show and not ok and sum(total.values()) - sum(correct.values()) <= show:
            print(f"{record.source}: {question!r} -> {answer!r} (expected {record.turns[1][1]!r})", file=sys.stderr)
    categories = {c: {"correct": correct[c], "total": total[c], "accuracy": correct[c] / total[c]} for c in sorted(total)}
    n, k = sum(total.values()), sum(correct.values())
    return {"model": str(model_dir), "data": str(data), "categories": categories,
            "overall": {"correct": k, "total": n, "accuracy": k / max(n, 1)},
            "seconds": round(time.perf_counter() - started, 1)}


def markdown_table(result: dict) -> str:
    lines = ["| category | exact match | correct / total |", "|---|---|---|"]
    for name, c in result["categories"].items():
        lines.append(f"| {name} | {100 * c['accuracy']:.1f}% | {c['correct']} / {c['total']} |")
    o = result["overall"]
    lines.append(f"| **all** | **{100 * o['accuracy']:.1f}%** | {o['correct']} / {o['total']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m training.evaluate",
                    description="Exact-match accuracy per category with the PyTorch oracle (greedy).")
    parser.add_argument("--model", required=True, metavar="CHECKPOINT", help="Hugging Face checkpoint directory")
    parser.add_argument("--data", required=True, metavar="JSON", help="LLaVA JSON split with a 'category' per record (e.g. out/synth/test.json)")
    parser.add_argument("--image-folder", metavar="DIR", help="where image paths resolve (default: beside the data file)")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="only the first N records (default: 0, all)")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="torch threads (default: 0, torch's choice)")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON here (default: printed only)")
    parser.add_argument("--show-errors", type=int, default=0, metavar="N", help="print up to N wrong answers")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = evaluate(args.model, args.data, args.image_folder, args.limit, show=args.show_errors)
    print(markdown_table(result))
    print(f"({result['overall']['total']} questions in {result['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
