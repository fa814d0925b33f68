"""Quantize checkpoints in every mode and gather the build reports into one table (docs/performance.md,
"Quantization"):

    python bench/quant.py examples/eve-tiny examples/eagle2_5-tiny --modes int4_awq fp8 --out out/bench-quant

Each (checkpoint, mode) is a real `build.py --quant` run in its own process (its own engine directory under
--out, kept); the build's report (quantization/report/report.json) holds the accuracy on the synthetic test split,
the agreement and KL against fp32, the sizes and the ONNX Runtime decode speed. --accept-accuracy-drop is
passed so that a failing gate still gives its numbers (the table shows the gate's verdict).

    python bench/quant.py --llama 110m

times the INT4-AWQ ONNX Runtime decoder, with each lm_head choice (float, int8, int4: build.py --lm-head), against
the fp32 one on bench/decode.py's random 110m Llama (the demo models are too small for 4-bit weights to pay): AWQ
calibrated on random text (timing only), the TensorRT-LLM checkpoint written, the INT4 graph built from it; one
thread, 32-token prompt, 64 greedy steps, best of 5, the engines interleaved round by round.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("int4_awq", "fp8", "w4a8_awq")


def run_build(checkpoint: Path, mode: str, out: Path, extra: list[str], text_only: bool = False) -> dict:
    engine = out / f"{checkpoint.name}-{mode}{'-text-calibration' if text_only else ''}"
    extra = [*extra, "--calib-text-only"] if text_only else extra
    argv = [sys.executable, "build.py", str(checkpoint), "--out", str(engine), "--force", "--quant", mode,
            "--accept-accuracy-drop", *extra]
    print("$", " ".join(argv[1:]), flush=True)
    start = time.monotonic()
    subprocess.run(argv, check=True)
    report = json.loads((engine / "quantization" / "report" / "report.json").read_text())
    report["build_s"] = round(time.monotonic() - start, 1)
    report["model"] = checkpoint.name
    return report


def table(reports: list[dict]) -> str:
    lines = ["| model | mode | calibration | row | accuracy (%) | Δ vs fp32 | token agreement (%) | mean KL | decode tok/s "
             "| decoder size |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        for name, row in r["rows"].items():
            if name == "fp32" and r is not next(x for x in reports if x["model"] == r["model"]):
                continue  # the fp32 row once per model
            agree = row["agreement"]
            calibration = "text only" if r["calibration"]["image_tokens"] == 0 else "with images"
            lines.append("| " + " | ".join([
                r["model"], "–" if name == "fp32" else r["mode"], "–" if name == "fp32" else calibration, name,
                f"{100 * row['accuracy']['overall']:.1f}",
                "–" if name == "fp32" else f"{0.0 - row['drop_points']:+.1f}",
                f"{100 * agree['token_agreement']:.1f}" if agree else "–",
                f"{agree['mean_kl']:.2e}" if agree else "–",
                f"{row['speed']['decode_tokens_per_s']:.0f}" if row["speed"] else "–",
                f"{row['size_bytes'] / 1e6:.2f} MB" if row["size_bytes"] else "–",
            ]) + " |")
    gates = [f"{r['model']} {r['mode']}{' (text calibration)' if r['calibration']['image_tokens'] == 0 else ''}: "
             f"{r['gate']['row']} {0.0 - r['gate']['drop_points']:+.1f} points "
             f"({'passed' if r['gate']['passed'] else 'FAILED'}), build {r['build_s']} s" for r in reports]
    return "\n".join(lines) + "\n\nGate (limit 2 points): " + "; ".join(gates) + "\n"


def llama_speed(size: str, out: Path) -> str:
    """fp32 vs INT4-AWQ ORT decoder on a random Llama of bench/decode.py: sizes and decode speed."""
    import decode  # bench/decode.py: the checkpoint of its workload

    decode.set_threads()
    import torch
    from transformers import LlamaForCausalLM

    from export.decoder import export_decoder
    from quant.calibration import CalibrationSet
    from quant.layerwise import quantize_decoder
    from quant.metrics import decode_speed
    from quant.modes import LM_HEADS, get_mode
    from quant.ort_int4 import export_int4_decoder
    from quant.trtllm import write_quantized_trtllm_checkpoint
    from runtime.backends.ort_decoder import OrtDecoder

    torch.set_num_threads(1)
    checkpoint = out / f"llama-{size}"
    if not (checkpoint / "config.json").is_file():
        decode.make_checkpoint(checkpoint, size)
    model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = torch.from_numpy(__import__("numpy").random.default_rng(0).integers(3, decode.VOCAB, (8, 128)))
    with torch.no_grad():
        calibration = CalibrationSet([model.get_input_embeddings()(row[None]) for row in ids], [0] * 8, [], "random text")
    start = time.monotonic()
    quantized = quantize_decoder(model, get_mode("int4_awq"), calibration)
    quantize_s = time.monotonic() - start
    trt = write_quantized_trtllm_checkpoint(model, quantized, out / f"llama-{size}-trtllm")
    built = {"fp32": (out / f"llama-{size}-fp32", None)}
    built.update({f"int4_awq, {h} lm_head": (out / f"llama-{size}-int4-{h}", h) for h in LM_HEADS})
    parts = {name: export_decoder(model, d, max_length=512) if h is None
             else export_int4_decoder(model, trt, d, max_length=512, lm_head=h) for name, (d, h) in built.items()}
    engines = {name: OrtDecoder(built[name][0], part, threads=1) for name, part in parts.items()}
    runs: dict[str, list[dict]] = {name: [] for name in parts}
    for _ in range(5):  # interleaved: each round times every engine once, so load changes hit them alike
        for name, engine in engines.items():
            runs[name].append(decode_speed(engine, new_tokens=64, repeats=1))
    rows = []
    for name, part in parts.items():
        size_mb = sum((built[name][0] / f).stat().st_size for f in part["files"]) / 1e6
        prefill = min(r["prefill_s"] for r in runs[name])
        rows.append(f"| {size} | {name} | {size_mb:.0f} MB | {1000 * prefill:.0f} ms | "
                    f"{max(r['decode_tokens_per_s'] for r in runs[name]):.0f} |")
    return ("| model | decoder | files | prefill (32 tokens) | decode tok/s |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\nAWQ calibration (8 x 128 tokens, 1 thread): {quantize_s:.0f} s\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="*", type=Path)
    p.add_argument("--llama", choices=("110m", "350m"), help="time fp32 vs INT4-AWQ on a random Llama instead")
    p.add_argument("--text-calibration", action="store_true",
                   help="also build each mode calibrated on text only (--calib-text-only), to compare")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["int4_awq", "fp8"])
    p.add_argument("--out", type=Path, default=Path("out/bench-quant"))
    p.add_argument("--eval-limit", type=int, help="first N questions of the synthetic test split (default: all 900)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # run as a script: the repository's packages
    args.out.mkdir(parents=True, exist_ok=True)
    if args.llama:
        text = llama_speed(args.llama, args.out)
        (args.out / f"llama-{args.llama}.md").write_text(text)
        print(text)
        return 0
    if not args.checkpoints:
        p.error("give checkpoints to quantize, or --llama SIZE")
    extra = []
    if args.eval_limit:
        extra += ["--eval-limit", str(args.eval_limit)]
    reports = [run_build(c, m, args.out, extra, text_only) for c in args.checkpoints for m in args.modes
               for text_only in ((False, True) if args.text_calibration else (False,))]
    text = table(reports)
    (args.out / "quant.md").write_text(text)
    (args.out / "quant.json").write_text(json.dumps(reports, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
