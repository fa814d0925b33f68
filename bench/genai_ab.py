"""Aerie's decoder engine and onnxruntime-genai's generator in one process, on the same ONNX Runtime, decode
steps interleaved: the closest comparison of the two graphs this machine allows (both engines see the same
load). Runs in the venv bench/decode.py makes for genai (its onnxruntime is the main venv's version);
needs the models bench/decode.py --genai [--int4] built.

    WORK/venv_genai/bin/python bench/genai_ab.py [--size 110m] [--precision fp32|int4] [--rounds 8]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import onnxruntime_genai as og

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.decode import prompt_ids  # noqa: E402
from runtime.backends.ort_decoder import OrtDecoder  # noqa: E402  (numpy + onnxruntime only)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="110m", choices=["110m", "350m"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int4"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--work", default=str(ROOT / ".tmp" / "bench"))
    args = parser.parse_args()
    work = Path(args.work)
    model = og.Model(str(work / f"genai_{args.size}_{args.precision}"))  # its threads as genai_worker.py last set them
    engine_dir = work / f"aerie_{args.size}_aerie{'-int4' if args.precision == 'int4' else ''}"
    engine = OrtDecoder(engine_dir, json.loads((engine_dir / "decoder.json").read_text()), threads=1)
    prompt = prompt_ids()

    def genai() -> float:
        params = og.GeneratorParams(model)
        total = len(prompt) + args.steps + 1
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        generator.generate_next_token()
        start = time.thread_time()
        for _ in range(args.steps):
            generator.generate_next_token()
        return args.steps / (time.thread_time() - start)

    def aerie() -> float:
        token = int(engine.prefill(0, np.array(prompt), None).argmax())
        start = time.thread_time()
        for _ in range(args.steps):
            token = int(engine.decode([0], np.array([token]))[0].argmax())
        return args.steps / (time.thread_time() - start)

    speeds: dict[str, list[float]] = {"onnxruntime-genai": [], "Aerie": []}
    for _ in range(args.rounds):
        speeds["onnxruntime-genai"].append(genai())
        speeds["Aerie"].append(aerie())
    print(f"| engine ({args.size} {args.precision}, onnxruntime {onnxruntime.__version__}, 1 thread) | "
          f"decode tok/s per CPU s, median of {args.rounds} | all rounds |\n|---|---|---|")
    for name, values in speeds.items():
        print(f"| {name} | {statistics.median(values):.1f} | {' '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
