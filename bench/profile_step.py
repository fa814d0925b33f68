"""Where a decode step's time goes: ONNX Runtime's profiler over decode steps of the engine bench/decode.py
exported, one thread, the time per op type and the step's time outside the kernels.

    python bench/decode.py --sizes 110m --int4      # exports the engines this reads (under --work)
    python bench/profile_step.py 110m               # the INT4 engine; `--kind aerie` for the fp32 one

The profiler itself slows a step by about a third: compare the shares, not the times, with bench/decode.py's.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.decode import ROOT, SIZES, prompt_ids, set_threads  # noqa: E402


def profiling_session(prefix: Path):
    """runtime.backends.ort_session.open_session's settings, one thread, with the profiler on."""
    from runtime.backends.ort_session import import_onnxruntime

    ort = import_onnxruntime()

    def open_session(path, device="cpu", threads=None):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(prefix)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    return open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", choices=list(SIZES))
    parser.add_argument("--kind", default="aerie-int4", choices=["aerie", "aerie-int4"])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--work", default=str(ROOT / ".tmp" / "bench"))
    args = parser.parse_args()
    set_threads(1)
    import runtime.backends.ort_decoder as ort_decoder

    engine_dir = Path(args.work) / f"aerie_{args.size}_{args.kind}"
    if not (engine_dir / "decoder.json").is_file():
        raise SystemExit(f"{engine_dir}: not exported; run `python bench/decode.py --sizes {args.size} --int4` first")
    ort_decoder.open_session = profiling_session(Path(args.work) / f"profile_{args.size}")  # the engine's session
    engine = ort_decoder.OrtDecoder(engine_dir, json.loads((engine_dir / "decoder.json").read_text()), threads=1)
    token = int(engine.prefill(0, np.array(prompt_ids(args.size)), None).argmax())
    start = time.perf_counter()
    for _ in range(args.steps):
        token = int(engine.decode([0], np.array([token]))[0].argmax())
    step_ms = (time.perf_counter() - start) * 1000 / args.steps
    trace = json.loads(Path(engine.session.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"][-args.steps:]
    by_op: collections.Counter = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= runs[0]["ts"]:
            by_op[event["args"]["op_name"]] += event["dur"]
    kernels_ms = sum(by_op.values()) / args.steps / 1000
    run_ms = sum(r["dur"] for r in runs) / args.steps / 1000
    print(f"{args.size} {args.kind}: a step {step_ms:.2f} ms, session.run {run_ms:.2f} ms, kernels {kernels_ms:.2f} ms")
    print("\n| op | ms a step | share of kernel time |\n|---|---|---|")
    for op, us in by_op.most_common():
        print(f"| {op} | {us / args.steps / 1000:.3f} | {100 * us / sum(by_op.values()):.1f}% |")


if __name__ == "__main__":
    main()
