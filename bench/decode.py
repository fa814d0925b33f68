"""Decode benchmark: Aerie's ONNX Runtime decoder against Hugging Face transformers `generate`,
onnxruntime-genai and (optionally) llama.cpp on the same random-weight Llama checkpoint.

Workload (research/cpu-decode-anchors.md): 1 thread (--threads), batch 1, a fixed 128-token prompt, exactly
128 new greedy tokens (no EOS). TTFT = prefill + first token; decode tok/s = 127 / (first to 128th token); peak RSS
of the process (each engine runs in its own process, model load included). 1 warm-up + `--runs` timed
runs, medians reported; every run must repeat the warm-up's tokens. Aerie's rows also give the share of the
bandwidth roofline: the bytes a decode step reads (weights but the token table, plus the KV cache at the mean
context) x tok/s / this core's read bandwidth (measured in the same run).

    python bench/decode.py                         # Aerie fp32 + HF fp32, 110m and 350m
    python bench/decode.py --genai --int4          # + onnxruntime-genai (own venv) + 4-bit rows
    python bench/decode.py --llamacpp              # + llama.cpp (llama-cpp-python, ~5 min source build)
    python bench/decode.py --vision                # + each family's vision graph and TTFT with one image

onnxruntime-genai pulls the CPU onnxruntime, which must never enter the main venv (it shares its folder with
onnxruntime-gpu): it gets its own venv under --work, as does llama-cpp-python.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 32000
SIZES = {  # cpu-decode-anchors.md: MHA, vocab 32000, untied lm_head, rope 1e4
    "110m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048, vocab_size=VOCAB),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=2816, vocab_size=VOCAB),
    # Qwen2.5-0.5B's and -1.5B's shapes (Eagle2-1B's and -2B's decoders) as Llamas, which every peer converts
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,  # Eagle2-2B's
                 intermediate_size=8960, vocab_size=151936),
}
PROMPT_TOKENS = 128
NEW_TOKENS = 128
# genai as it installs by default (it pulls the CPU package onnxruntime 1.32.0); Aerie runs on the main venv's
# ONNX Runtime, which is the same 1.32.0 when installed with the `cpu` extra (README): the engines compare as
# each one installs.
GENAI_PINS = ["onnxruntime-genai==0.18.0", "onnxruntime==1.32.0", "onnx-ir==1.1.0", "onnx==1.23.2", "torch==2.13.0", "transformers==5.23.0",
              "safetensors==0.8.0"]
LLAMACPP_PINS = ["llama-cpp-python==0.3.36", "gguf==0.19.0", "safetensors==0.8.0"]


def set_threads(threads: int = 1) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def prompt_ids(size: str = "110m") -> list[int]:
    import numpy as np

    return np.random.default_rng(1234).integers(3, SIZES[size]["vocab_size"], PROMPT_TOKENS).tolist()


def read_bandwidth() -> float:
    """Bytes per second one thread reads from memory: a dot product of a 512 MB array with itself, best of 6."""
    import numpy as np

    a = np.ones(2**27, np.float32)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        np.dot(a, a)
        best = min(best, time.perf_counter() - start)
    return a.nbytes / best


def bytes_per_token(engine_dir: Path, size: str) -> int:
    """What one decode step of Aerie's engine reads: its graph's weights (the token table lives outside the graph
    and is read one row at a time) and the float32 KV cache of the mean context (prompt + half the new tokens)."""
    shape = SIZES[size]
    graph = sum(f.stat().st_size for f in (engine_dir / "decoder").iterdir() if f.is_file())
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    kv = shape["num_hidden_layers"] * 2 * shape["num_key_value_heads"] * head_dim * 4 * (PROMPT_TOKENS + NEW_TOKENS // 2)
    return graph + kv


def peak_rss_mb() -> float:
    """This process's high-water RSS since its exec (VmHWM; ru_maxrss would carry the parent's peak over)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the benchmark measures memory on Linux only")


# --- the checkpoint -------------------------------------------------------------------------------


def make_checkpoint(directory: Path, size: str) -> None:
    """A random LlamaForCausalLM in Hugging Face layout, with a word-level tokenizer of the full vocabulary
    (onnxruntime-genai's builder and llama.cpp's converter want one)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, **SIZES[size])
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, config.vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": False, "model_max_length": 2048}))


def export_aerie(checkpoint: Path, engine_dir: Path, int4: bool) -> None:
    import torch
    from transformers import LlamaForCausalLM

    from export.decoder import export_decoder

    model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    quantized = rtn_int4_linears(model) if int4 else None
    spec = export_decoder(model, engine_dir, max_length=512, quantized=quantized)
    (engine_dir / "decoder.json").write_text(json.dumps(spec, indent=2))


def rtn_int4_linears(model) -> dict:
    """Every linear as `build.py --quant int4_awq` writes it for ONNX Runtime, with round-to-nearest codes in place
    of AWQ's (timing only: the same kernels and bytes): 4 bits in AWQ's groups of 128, the lm_head as the build's
    default (--lm-head)."""
    from torch import nn

    from quant.modes import DEFAULT_LM_HEAD, LM_HEADS
    from quant.ort_int4 import round_to_nearest
    from quant.quantize import QuantOptions

    linears = {name: round_to_nearest(module.weight.detach(), 4, QuantOptions.group_size, accuracy_level=4)
               for name, module in model.named_modules() if isinstance(module, nn.Linear) and name != "lm_head"}
    if LM_HEADS[DEFAULT_LM_HEAD]:
        bits, block = LM_HEADS[DEFAULT_LM_HEAD]
        linears["lm_head"] = round_to_nearest(model.lm_head.weight.detach(), bits, block, accuracy_level=4)
    return linears


def aerie_int4_label() -> str:
    from quant.modes import DEFAULT_LM_HEAD
    from quant.quantize import QuantOptions

    return f"int4 RTN g{QuantOptions.group_size}, lm_head {DEFAULT_LM_HEAD}"


# --- workers (one process each) -------------------------------------------------------------------


def run_hf(checkpoint: Path, size: str, runs: int, threads: int) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return hf_generate_timed(model, NEW_TOKENS, runs, input_ids=torch.tensor([prompt_ids(size)]))


def hf_generate_timed(model, new_tokens: int, runs: int, repeatable: bool = True, **inputs) -> dict:
    """HF `generate` on `inputs` (input_ids or inputs_embeds): exactly `new_tokens` greedy tokens, no EOS, each
    token's time taken when its logits are ready; `timed`'s record."""
    import torch
    from transformers import LogitsProcessor

    class Clock(LogitsProcessor):
        """Called once per new token, when its logits are ready."""

        def __init__(self):
            self.times: list[tuple[float, float]] = []

        def __call__(self, input_ids, scores):
            if scores.is_cuda:
                torch.cuda.synchronize()  # the logits exist now, not only queued
            self.times.append(now())
            return scores

    def once():
        clock = Clock()
        start = now()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=0, logits_processor=[clock])
        return out[0, -new_tokens:].tolist(), start, clock.times[0], clock.times[-1]

    return timed(once, runs, repeatable)


def run_aerie(engine_dir: Path, checkpoint: Path, size: str, runs: int, threads: int) -> dict:
    import numpy as np

    from runtime.backends.ort_decoder import OrtDecoder
    from runtime.generate import Generator, Request
    from runtime.sampling import SamplingParams
    from runtime.tokenizer import Tokenizer

    spec = json.loads((engine_dir / "decoder.json").read_text())
    engine = OrtDecoder(engine_dir, spec, max_batch=1, threads=threads)
    generator = Generator(engine, Tokenizer.from_dir(checkpoint), eos_ids=(), stop=())
    request = Request(np.array(prompt_ids(size)), None, SamplingParams(max_new_tokens=NEW_TOKENS))

    def once():
        start = now()
        seq = generator.submit(request)
        generator.step()  # prefill and the first token
        first = now()
        while not seq.done:
            generator.step()
        return seq.result.token_ids, start, first, now()

    return {**timed(once, runs), "bytes_per_token": bytes_per_token(engine_dir, size)}


def now() -> tuple[float, float]:
    """Wall time and this process's CPU time. The CPU time leaves out the time other processes held the
    core, so it stays meaningful on a shared, busy machine (single-thread engines only)."""
    return time.perf_counter(), time.process_time()


def timed(once, runs: int, repeatable: bool = True) -> dict:
    """`once()` -> (tokens, start, first token, last token), times from `now()`: one warm-up, then `runs`.
    `repeatable`: every run must give the warm-up's tokens; else (GPU kernels need not be deterministic) the
    record counts the runs that did."""
    tokens = once()[0]
    out: dict = {"tokens": tokens, "ttft_ms": [], "tok_s": [], "ttft_cpu_ms": [], "tok_s_cpu": [], "repeats": 0}
    for _ in range(runs):
        again, start, first, last = once()
        if again != tokens and repeatable:
            raise RuntimeError("a timed run gave other tokens than the warm-up")
        out["repeats"] += again == tokens
        for k, suffix in ((0, ""), (1, "_cpu")):
            out[f"ttft{suffix}_ms"].append(1000 * (first[k] - start[k]))
            out[f"tok_s{suffix}"].append((len(tokens) - 1) / (last[k] - first[k]))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


# --- side venvs -----------------------------------------------------------------------------------


def side_venv(path: Path, pins: list[str], env: dict | None = None) -> Path:
    """A venv at `path` with `pins` installed (once; a stamp file marks it done). Returns its python."""
    python = path / "bin" / "python"
    stamp = path / ".installed"
    if stamp.is_file() and stamp.read_text() == "\n".join(pins):
        return python
    print(f"  creating {path} ({', '.join(pins)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True, env={**os.environ, **(env or {})})
    stamp.write_text("\n".join(pins))
    return python


def run_genai(work: Path, checkpoint: Path, size: str, precision: str, runs: int, threads: int) -> dict:
    python = side_venv(work / "venv_genai", GENAI_PINS)
    model_dir = work / f"genai_{size}_{precision}"
    if not (model_dir / "genai_config.json").is_file():
        print(f"  building the onnxruntime-genai {precision} model ...", flush=True)
        subprocess.run([str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(model_dir),
                        "-p", precision, "-e", "cpu", "-c", str(work / "genai_cache")], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return worker_json([str(python), str(ROOT / "bench" / "genai_worker.py"), str(model_dir),
                        json.dumps(prompt_ids(size)), str(NEW_TOKENS), str(runs), str(threads)])


def run_llamacpp(work: Path, checkpoint: Path, size: str, precision: str, runs: int, threads: int) -> dict:
    python = side_venv(work / "venv_llamacpp", LLAMACPP_PINS, env={"CMAKE_BUILD_PARALLEL_LEVEL": "2"})
    gguf = work / f"llama_{size}_{precision}.gguf"
    if not gguf.is_file():
        subprocess.run([str(python), str(ROOT / "bench" / "llamacpp_worker.py"), "convert", str(checkpoint), str(gguf),
                        precision], check=True)
    return worker_json([str(python), str(ROOT / "bench" / "llamacpp_worker.py"), "run", str(gguf),
                        json.dumps(prompt_ids(size)), str(NEW_TOKENS), str(runs), str(threads)])


def worker_json(command: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker(kind: str, args: argparse.Namespace) -> dict:
    """Run one engine in this process; the parent reads the last stdout line."""
    work = Path(args.work)
    checkpoint = work / f"llama_{args.size}"
    if kind == "hf":
        return run_hf(checkpoint, args.size, args.runs, args.threads)
    if kind in ("aerie", "aerie-int4"):
        return run_aerie(work / f"aerie_{args.size}_{kind}", checkpoint, args.size, args.runs, args.threads)
    raise ValueError(kind)


def in_subprocess(kind: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--size", args.size, "--work", args.work, "--runs", str(args.runs),
               "--threads", str(args.threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the report -----------------------------------------------------------------------------------


def prepare(work: Path, size: str, int4: bool = False) -> None:
    """The random checkpoint of `size` and its Aerie engines (fp32, and INT4 with `int4`), made once under `work`."""
    checkpoint = work / f"llama_{size}"
    if not (checkpoint / "tokenizer_config.json").is_file():
        print(f"  writing the random {size} checkpoint ...", flush=True)
        make_checkpoint(checkpoint, size)
    for kind in ("aerie", "aerie-int4") if int4 else ("aerie",):
        engine_dir = work / f"aerie_{size}_{kind}"
        if not (engine_dir / "decoder.json").is_file():
            print(f"  exporting {kind} ...", flush=True)
            start = time.perf_counter()
            export_aerie(checkpoint, engine_dir, int4=kind == "aerie-int4")
            print(f"  exported in {time.perf_counter() - start:.1f} s", flush=True)


def summarize(name: str, precision: str, r: dict, hf: dict | None, bandwidth: float) -> dict:
    row = {"engine": name, "precision": precision, "peak_rss_mb": r["peak_rss_mb"],
           "passes": "; ".join(f"{t:.0f} / {d:.1f}" for t, d in r["pass_medians"])}
    if "bytes_per_token" in r:
        row["bytes_per_token"] = r["bytes_per_token"]
        row["roofline"] = r["bytes_per_token"] * statistics.median(r["tok_s"]) / bandwidth
    for key in ("ttft_ms", "tok_s", "ttft_cpu_ms", "tok_s_cpu"):
        row[key] = statistics.median(r[key])
        if hf is not None:  # decode: speed-up (higher is better); TTFT: fraction of HF's (lower is better)
            row[f"{key}_vs_hf"] = row[key] / statistics.median(hf[key])
    if hf is not None:
        prefix = 0
        for a, b in zip(r["tokens"], hf["tokens"]):
            if a != b:
                break
            prefix += 1
        row["same_tokens_as_hf"] = prefix
    return row


def merge_passes(passes: list[dict]) -> dict:
    """All timed runs of every pass together; per-pass medians (wall) kept to show the noise."""
    if any(p["tokens"] != passes[0]["tokens"] for p in passes):
        raise RuntimeError("two passes of one engine gave different tokens")
    merged = {key: [x for p in passes for x in p[key]] for key in ("ttft_ms", "tok_s", "ttft_cpu_ms", "tok_s_cpu")}
    extra = {"bytes_per_token": passes[0]["bytes_per_token"]} if "bytes_per_token" in passes[0] else {}
    return {"tokens": passes[0]["tokens"], **merged, **extra, "peak_rss_mb": max(p["peak_rss_mb"] for p in passes),
            "pass_medians": [(statistics.median(p["ttft_ms"]), statistics.median(p["tok_s"])) for p in passes]}


def table(rows: list[dict]) -> str:
    lines = ["| engine | precision | TTFT ms (CPU ms) | decode tok/s (per CPU s) | peak RSS MB | decode vs HF fp32 "
             "(CPU) | TTFT / HF fp32's (CPU) | greedy tokens = HF fp32 (of 128) | MB read per token, share of one thread's read bandwidth "
             "| per-pass wall medians (TTFT ms / tok/s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['precision']} | {r['ttft_ms']:.0f} ({r['ttft_cpu_ms']:.0f}) | "
            f"{r['tok_s']:.1f} ({r['tok_s_cpu']:.1f}) | {r['peak_rss_mb']:.0f} | "
            f"{r.get('tok_s_vs_hf', 1.0):.2f}x ({r.get('tok_s_cpu_vs_hf', 1.0):.2f}x) | "
            f"{r.get('ttft_ms_vs_hf', 1.0):.2f} ({r.get('ttft_cpu_ms_vs_hf', 1.0):.2f}) | "
            f"{r.get('same_tokens_as_hf', 128)} | {roofline_cell(r)} | {r['passes']} |")
    return "\n".join(lines)


def roofline_cell(row: dict) -> str:
    if "roofline" not in row:
        return "—"
    return f"{row['bytes_per_token'] / 1e6:.0f}, {100 * row['roofline']:.0f}%"


def ort_version() -> str:
    from importlib import metadata

    for package in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return f"{package} {metadata.version(package)}"
        except metadata.PackageNotFoundError:
            continue
    return "no onnxruntime"


def plan_for(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(kind, engine name, precision) for every row, HF first."""
    genai, llamacpp = "onnxruntime-genai 0.18", "llama.cpp (llama-cpp-python 0.3.36)"
    plan = [("hf", "HF transformers generate (eager)", "fp32"), ("aerie", "Aerie (ORT, fused graph)", "fp32")]
    plan += [("genai", genai, "fp32")] if args.genai else []
    plan += [("llamacpp", llamacpp, "f32")] if args.llamacpp else []
    if args.int4:
        plan += [("aerie-int4", "Aerie (ORT, fused graph)", aerie_int4_label())]
        plan += [("genai-int4", genai, "int4")] if args.genai else []
        plan += [("llamacpp-q4", llamacpp, "q4_0")] if args.llamacpp else []
    return plan


def run_one(kind: str, args: argparse.Namespace) -> dict:
    work = Path(args.work)
    checkpoint = work / f"llama_{args.size}"
    if kind.startswith("genai"):
        return run_genai(work, checkpoint, args.size, "int4" if kind.endswith("int4") else "fp32", args.runs, args.threads)
    if kind.startswith("llamacpp"):
        return run_llamacpp(work, checkpoint, args.size, "q4_0" if kind.endswith("q4") else "f32", args.runs, args.threads)
    return in_subprocess(kind, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--runs", type=int, default=3, help="timed runs per engine and pass (after one warm-up)")
    parser.add_argument("--passes", type=int, default=2, help="times the whole suite runs, engines interleaved")
    parser.add_argument("--work", default=str(ROOT / ".tmp" / "bench"), help="checkpoints, engines and side venvs")
    parser.add_argument("--genai", action="store_true", help="also onnxruntime-genai (its own venv, ~1.3 GB)")
    parser.add_argument("--llamacpp", action="store_true", help="also llama.cpp (llama-cpp-python source build, ~5 min)")
    parser.add_argument("--int4", action="store_true", help="also 4-bit rows: Aerie's INT4 graph as built (RTN codes), the peers' defaults")
    parser.add_argument("--vision", action="store_true", help="also each family's vision graph and TTFT with one image")
    parser.add_argument("--threads", type=int, default=1, help="threads of every engine (prefill and decode)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    Path(args.work).mkdir(parents=True, exist_ok=True)
    print(f"# decode benchmark, {date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} thread(s), batch 1, prompt {PROMPT_TOKENS}, {NEW_TOKENS} new tokens, {args.passes} passes x "
          f"{args.runs} runs; Aerie on {ort_version()}")
    print(f"# command: python bench/decode.py {' '.join(sys.argv[1:])}")
    bandwidth = read_bandwidth()
    print(f"# read bandwidth, one thread: {bandwidth / 1e9:.1f} GB/s", flush=True)
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict = {"read_bandwidth": bandwidth, "threads": args.threads, "aerie_ort": ort_version()}
    plan = plan_for(args)
    for size in args.sizes:
        args.size = size
        print(f"\n## llama{size}", flush=True)
        prepare(Path(args.work), size, args.int4)
        passes: dict[str, list[dict]] = {kind: [] for kind, _, _ in plan}
        for k in range(args.passes):
            for kind, name, precision in plan:
                r = run_one(kind, args)
                passes[kind].append(r)
                print(f"  pass {k + 1}: {name} {precision}: TTFT {statistics.median(r['ttft_ms']):.0f} ms "
                      f"(CPU {statistics.median(r['ttft_cpu_ms']):.0f}), {statistics.median(r['tok_s']):.1f} tok/s "
                      f"(per CPU s {statistics.median(r['tok_s_cpu']):.1f}), peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        raw = {kind: merge_passes(p) for kind, p in passes.items()}
        rows = [summarize(name, precision, raw[kind], None if kind == "hf" else raw["hf"], bandwidth)
                for kind, name, precision in plan]
        results[size] = {"rows": rows, "raw": raw}
        print(f"\n### llama{size}\n\n{table(rows)}", flush=True)
    if args.vision:
        from bench.vision import run_vision_benchmarks  # only with --vision

        results["vision"] = run_vision_benchmarks(Path(args.work), args.runs)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    out = Path(args.work) / f"results-{date.today()}-{args.threads}t.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
