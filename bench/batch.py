"""Batched decoding: tokens per second over all slots when 1, 2, 4, 8 sequences decode together in one
`OrtDecoder.decode` call each (what the server's continuous batching does), 1 thread, llama110m fp32.

    python bench/batch.py            # uses (or makes) the checkpoint and engine of bench/decode.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.decode import ROOT, VOCAB, now, set_threads, prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="110m", choices=["110m", "350m"])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=str(ROOT / ".tmp" / "bench"))
    args = parser.parse_args()
    set_threads()
    prepare(Path(args.work), args.size)

    import numpy as np

    from runtime.backends.ort_decoder import OrtDecoder

    engine_dir = Path(args.work) / f"aerie_{args.size}_aerie"
    engine = OrtDecoder(engine_dir, json.loads((engine_dir / "decoder.json").read_text()), max_batch=8, threads=1)
    rng = np.random.default_rng(0)
    print(f"# command: python bench/batch.py {' '.join(sys.argv[1:])}; load average {os.getloadavg()[0]:.2f}")
    print("| slots decoding together | tokens/s, all slots (per CPU s) |\n|---|---|")
    for batch in (1, 2, 4, 8):
        wall, cpu = [], []
        for _ in range(args.runs):
            slots = list(range(batch))
            tokens = [int(engine.prefill(s, rng.integers(3, VOCAB, 128), None).argmax()) for s in slots]
            start = now()
            for _ in range(args.steps):
                tokens = engine.decode(slots, np.array(tokens)).argmax(-1)
            end = now()
            wall.append(args.steps * batch / (end[0] - start[0]))
            cpu.append(args.steps * batch / (end[1] - start[1]))
        print(f"| {batch} | {statistics.median(wall):.1f} ({statistics.median(cpu):.1f}) |", flush=True)


if __name__ == "__main__":
    main()
