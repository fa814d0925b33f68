"""Real-size builds, measured: random-weight checkpoints of the released shapes (bench/random_checkpoint.py)
through build.py, then on the CPU against Hugging Face transformers.

    python bench/real_size.py eve-110m --build-args "--eval-limit 16"   # the harness on a small model
    python bench/real_size.py eve-1b eagle2-1b eve-7b eagle2_5-8b        # the real sizes

For each preset: write its checkpoint (if not there already); build a float engine (fp32, or --float-dtype
fp16) and an INT4-AWQ engine, each `build.py` in its own process, recording the seconds of every step it
prints, its peak RSS (the child's high-water mark from os.wait4) and the engine's size on disk. Then, 1 thread,
each in its own process: the engine through `runtime.Pipeline` (time to first token with one image = preprocess
+ vision + prefill + first token; decode tok/s; peak RSS; exactly --new-tokens greedy tokens, no EOS), and HF
transformers' decoder (LlamaForCausalLM / Qwen2ForCausalLM loaded with from_pretrained from the checkpoint's
decoder keys) generating from the same prompt embeddings (the float engine's image rows), fp32 and bf16,
wherever the memory allows. Engines are deleted once measured unless --keep; checkpoints stay for the next run.
Free disk and memory are checked before each step; a step that does not fit is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# No torch in this process: a child's ru_maxrss is max(its own peak, this process's RSS when it was spawned).
from bench.decode import hf_generate_timed, now, set_threads, timed  # noqa: E402
from bench.random_checkpoint import PRESETS, is_complete  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Describe the image in detail."
IMAGE_SIDE = 448  # one Eagle tile (256 rows), 601 rows for EVE at 672 px
# What a build writes, per parameter (rough; checked before each build): the engine in its dtype, the token
# table again; an INT4-AWQ build today also keeps the float engine, the TensorRT-LLM and HF checkpoints.
DISK_PER_PARAM = {"fp32": 4.4, "fp16": 2.2, "int4_awq": 7.0}
HF_DTYPES = {"fp32": 4, "bf16": 2}  # bytes per parameter
HF_DECODERS = {"eve": ("LlamaForCausalLM", ""), "eagle_v1": ("LlamaForCausalLM", ""),
               "eagle2_5": ("Qwen2ForCausalLM", "language_model."),
               "eagle2": ("Qwen2ForCausalLM", "language_model.")}  # class, prefix of its keys
GB = 1e9
STEP_LINE = re.compile(r"^  (?P<head>\S.*?)\s+(?P<seconds>\d+(?:\.\d+)?) s$")
NAME_WIDTH = 15  # build.py pads step names to this; a longer name runs into its details


# --- the machine ------------------------------------------------------------------------------------------


def available_memory() -> int:
    """Bytes the kernel can give without swapping (MemAvailable)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo: the benchmark measures memory on Linux only")


def lacking_disk(where: Path, needed: float) -> str | None:
    free = shutil.disk_usage(where).free
    return f"needs ~{needed / GB:.1f} GB of disk, {free / GB:.1f} GB free" if free < needed else None


def lacking_memory(needed: float) -> str | None:
    free = available_memory()
    return f"needs ~{needed / GB:.1f} GB of memory, {free / GB:.1f} GB available" if free < needed else None


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())  # 0 for a path that is not there


# --- children ---------------------------------------------------------------------------------------------


def read_lines(stream, into: list[str], echo: bool) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))
        if echo:
            print(f"    {into[-1]}", flush=True)


def run_child(argv: list[str], echo: bool = True) -> dict:
    """Run `argv`, echoing its output; returns its exit code, wall seconds, peak RSS (MB), stdout and stderr
    lines (read apart: build.py's progress bars on stderr would otherwise cut its step lines on stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, bufsize=1)
    lines: list[str] = []
    errors: list[str] = []
    reader = threading.Thread(target=read_lines, args=(proc.stderr, errors, echo))
    reader.start()
    read_lines(proc.stdout, lines, echo)
    reader.join()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage alone
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "lines": lines, "errors": errors}


def failure(child: dict) -> str:
    """What a failed child said last, in one line."""
    if child["returncode"] == -9:
        return "killed (out of memory?)"
    said = [line.strip() for line in child["errors"] or child["lines"] if line.strip()]
    return f"exit {child['returncode']}: {said[-1] if said else 'no output'}"


def last_json(child: dict) -> dict:
    return json.loads(child["lines"][-1])


def worker(kind: str, **kwargs) -> dict:
    """Run one measurement (`measure_<kind>(**kwargs)`) in a child process of this script: its result or an error."""
    child = run_child([sys.executable, __file__, "--worker", kind, json.dumps(kwargs, default=str)], echo=False)
    return last_json(child) if child["returncode"] == 0 else {"error": failure(child)}


# --- build.py ---------------------------------------------------------------------------------------------


def parse_steps(lines: list[str]) -> list[dict]:
    """build.py's step lines, `  <name> <details> <seconds> s` (a name wider than build.py's column runs into
    its details: it is cut at the column); a step printed again in a row (a progress update) keeps its last line."""
    steps: list[dict] = []
    for line in lines:
        found = STEP_LINE.match(line)
        if not found:
            continue
        head = found.group("head")
        parts = re.split(r"\s{2,}", head, maxsplit=1)
        if len(parts) == 2 and len(parts[0]) <= NAME_WIDTH + 4:
            name, details = parts
        else:
            name, details = head[:NAME_WIDTH].strip(), head[NAME_WIDTH:].strip()
        step = {"step": name, "details": details, "seconds": float(found.group("seconds"))}
        if steps and steps[-1]["step"] == name:
            steps[-1] = step
        else:
            steps.append(step)
    return steps


def build(checkpoint: Path, engine: Path, kind: str, params: int, build_args: list[str]) -> dict:
    """`build.py` for a float (`fp32`, `fp16`) or `int4_awq` engine: steps, wall time, peak RSS, size."""
    short = lacking_disk(engine.parent, params * DISK_PER_PARAM[kind])
    if short:
        return {"skipped": short}
    # Random weights score ~0 with or without quantization: the accuracy gate's verdict means nothing here.
    flags = ["--quant", kind, "--accept-accuracy-drop"] if kind == "int4_awq" else ["--dtype", kind]
    argv = [sys.executable, "build.py", str(checkpoint), "--out", str(engine), "--force", *flags, *build_args]
    print(f"  $ {shlex.join(argv[1:])}", flush=True)
    child = run_child(argv)
    record = {"command": shlex.join(["python", *argv[1:]]), "wall_s": child["wall_s"], "cpu_s": child["cpu_s"],
              "peak_rss_mb": child["peak_rss_mb"], "steps": parse_steps(child["lines"])}
    if child["returncode"] != 0:
        return {**record, "error": failure(child)}
    # The runtime loads the engine less quantization/ (the TensorRT-LLM and HF checkpoints, the report).
    return {**record, "engine_bytes": tree_bytes(engine), "runtime_bytes": tree_bytes(engine) - tree_bytes(engine / "quantization")}


# --- workers (one process each) ---------------------------------------------------------------------------


def measure_runtime(engine_dir: str, image: str, new_tokens: int, runs: int, prompt_out: str) -> dict:
    """The engine through the runtime: TTFT with one image, decode tok/s, peak RSS; saves the prompt (ids and
    image rows) for the HF run."""
    import numpy as np

    from runtime.pipeline import Pipeline

    start = time.perf_counter()
    pipe = Pipeline(engine_dir, threads=1, max_batch=1, cache_bytes=0, verify_checksums=False)
    load_s = time.perf_counter() - start
    result, request = time_pipeline(pipe, image, new_tokens, runs)
    np.savez(prompt_out, ids=request.input_ids, table=request.image_table)
    return {**result, "load_s": round(load_s, 2)}


def time_pipeline(pipe, image: str, new_tokens: int, runs: int, repeatable: bool = True) -> tuple[dict, object]:
    """`timed`'s record of a runtime Pipeline answering PROMPT about `image` with exactly `new_tokens` greedy
    tokens (TTFT = preprocess + vision + prefill + first token), the image's ms per run, and the last Request."""
    from runtime.generate import Generator
    from runtime.sampling import SamplingParams

    generator = Generator(pipe.decoder, pipe.tokenizer, eos_ids=(), stop=())  # always new_tokens tokens
    params = SamplingParams(max_new_tokens=new_tokens)
    images_s: list[float] = []
    prepared = []

    def once():
        start = now()
        prepared[:] = [pipe.prepare(PROMPT, [image], params)]
        seq = generator.submit(prepared[0].request)
        generator.step()  # prefill and the first token
        first = now()
        while not seq.done:
            generator.step()
        images_s.append(prepared[0].preprocess_s + prepared[0].vision_s)
        return seq.result.token_ids, start, first, now()

    result = timed(once, runs, repeatable)
    request = prepared[0].request
    return ({**result, "image_ms": [1000 * s for s in images_s[1:]], "prompt_tokens": int(len(request.input_ids)),
             "image_tokens": int(request.image_table.shape[0])}, request)


def measure_hf(checkpoint: str, prompt: str, dtype: str, new_tokens: int, runs: int) -> dict:
    """HF transformers' decoder from the checkpoint's decoder keys, generating from the runtime's prompt."""
    import numpy as np
    import torch

    from models.vlm import embed_with_images

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    start = time.perf_counter()
    model = load_hf_decoder(checkpoint, torch.float32 if dtype == "fp32" else torch.bfloat16)
    load_s = time.perf_counter() - start
    saved = np.load(prompt)
    ids = torch.from_numpy(saved["ids"])[None]
    with torch.no_grad():
        embeds = embed_with_images(model.get_input_embeddings(), ids, torch.from_numpy(saved["table"]))
    result = hf_generate_timed(model, new_tokens, runs, inputs_embeds=embeds, attention_mask=torch.ones_like(ids))
    return {**result, "load_s": round(load_s, 2)}


def load_hf_decoder(checkpoint: str | Path, dtype):
    """HF transformers' own causal LM (LlamaForCausalLM / Qwen2ForCausalLM) loaded with from_pretrained from the
    checkpoint's decoder keys, in `dtype` (a torch dtype), eval mode."""
    import transformers

    from models.checkpoint import read_config
    from models.registry import detect_family

    config = read_config(checkpoint)
    architecture, prefix = HF_DECODERS[detect_family(config).name]
    cls = getattr(transformers, architecture)
    fields = (config.get("llm_config") or config["text_config"]) if prefix else config  # Eagle2: llm_config
    hf_config = cls.config_class(**{k: v for k, v in fields.items() if k not in ("model_type", "architectures")})
    model, info = cls.from_pretrained(checkpoint, config=hf_config, dtype=dtype,
                                      key_mapping={f"^{re.escape(prefix)}": ""} if prefix else None,
                                      output_loading_info=True)
    if info["missing_keys"]:
        raise RuntimeError(f"{checkpoint}: the decoder lacks {sorted(info['missing_keys'])[:4]}")
    return model.eval()


# --- one preset -------------------------------------------------------------------------------------------


def ensure_checkpoint(name: str, directory: Path) -> dict:
    """The preset's checkpoint, written by bench/random_checkpoint.py in a child process unless already there
    (its summary is kept beside it)."""
    summary = directory.with_name(f"{directory.name}.json")
    if is_complete(directory) and summary.is_file():
        return {**json.loads(summary.read_text()), "reused": True}
    print(f"  writing the random {name} checkpoint into {directory} ...", flush=True)
    child = run_child([sys.executable, "bench/random_checkpoint.py", name, "--out", str(directory)])
    if child["returncode"] != 0:
        raise RuntimeError(f"writing the {name} checkpoint: {failure(child)}")
    summary.write_text(child["lines"][-1] + "\n")
    return last_json(child)


def bench_image(work: Path) -> Path:
    """examples/images/shapes.png on a square IMAGE_SIDE canvas: one Eagle tile, EVE's full 24 x 24 grid."""
    from PIL import Image

    path = work / f"shapes-{IMAGE_SIDE}.png"
    if not path.is_file():
        Image.open(ROOT / "examples" / "images" / "shapes.png").convert("RGB").resize((IMAGE_SIDE, IMAGE_SIDE)).save(path)
    return path


def run_preset(name: str, args: argparse.Namespace, work: Path, image: Path) -> dict:
    print(f"\n## {name}: {PRESETS[name].about}", flush=True)
    checkpoint = work / "checkpoints" / name
    record: dict = {"about": PRESETS[name].about, "checkpoint": ensure_checkpoint(name, checkpoint),
                    "builds": {}, "runtime": {}, "hf": {}}
    params = record["checkpoint"]["parameters"]
    kinds = [args.float_dtype if kind == "float" else kind for kind in args.engines]
    prompts = {kind: work / f"prompt-{name}-{kind}.npz" for kind in kinds}
    for prompt in prompts.values():
        prompt.unlink(missing_ok=True)  # a previous run's
    for kind, prompt in prompts.items():
        engine = work / "engines" / f"{name}-{kind}"
        built = record["builds"][kind] = build(checkpoint, engine, kind, params, args.build_args)
        if "engine_bytes" not in built:
            print(f"  {kind} build: {built.get('error') or 'skipped: ' + built['skipped']}", flush=True)
            continue
        short = lacking_memory(built["runtime_bytes"] * 1.1 + 0.5 * GB)
        runtime = record["runtime"][kind] = {"skipped": short} if short else worker(
            "runtime", engine_dir=engine, image=image, new_tokens=args.new_tokens, runs=args.runs, prompt_out=prompt)
        print(f"  {kind} runtime: {summary_line(runtime)}", flush=True)
        if not args.keep:
            shutil.rmtree(engine, ignore_errors=True)
    prompt = next((path for path in prompts.values() if path.is_file()), None)  # the float engine's, if it ran
    for dtype in args.hf_dtypes if prompt else ():
        short = lacking_memory(params * HF_DTYPES[dtype] * 1.2 + 0.5 * GB)
        hf = record["hf"][dtype] = {"skipped": short} if short else worker(
            "hf", checkpoint=checkpoint, prompt=prompt, dtype=dtype, new_tokens=args.new_tokens, runs=args.runs)
        print(f"  HF transformers {dtype}: {summary_line(hf)}", flush=True)
    return record


def summary_line(r: dict) -> str:
    if "skipped" in r or "error" in r:
        return r.get("error") or f"skipped: {r['skipped']}"
    return (f"TTFT {statistics.median(r['ttft_ms']):.0f} ms (CPU {statistics.median(r['ttft_cpu_ms']):.0f}), "
            f"{statistics.median(r['tok_s']):.2f} tok/s (per CPU s {statistics.median(r['tok_s_cpu']):.2f}), "
            f"peak RSS {gb(r['peak_rss_mb'])}, load {r['load_s']:.1f} s")


# --- the report -------------------------------------------------------------------------------------------


def gb(mb: float) -> str:
    """MiB (RSS as the kernel counts it) in GB, the unit of the file sizes."""
    return f"{mb * 2**20 / GB:.2f} GB"


def seconds(s: float) -> str:
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}"


def checkpoint_table(results: dict) -> str:
    lines = ["| model | what | params | checkpoint | written in | writer peak RSS |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        c = r["checkpoint"]
        written = "(reused)" if c.get("reused") else f"{c['seconds']:.0f} s"
        lines.append(f"| {name} | {r['about']} | {c['parameters'] / GB:.2f} B | {c['bytes'] / GB:.2f} GB {c['dtype']}, "
                     f"{c['shards']} shard(s) | {written} | {c['writer_peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def build_table(results: dict) -> str:
    lines = ["| model | params | engine | build s (CPU s) | peak RSS | engine size | steps (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for kind, b in r["builds"].items():
            if "skipped" in b:
                cells = ["–", "–", "–", f"skipped: {b['skipped']}"]
            else:
                steps = ", ".join(f"{s['step']} {seconds(s['seconds'])}" for s in b["steps"])
                size = f"{b['engine_bytes'] / GB:.2f} GB" if "engine_bytes" in b else f"FAILED: {b['error']}"
                cells = [f"{b['wall_s']:.0f} ({b['cpu_s']:.0f})", gb(b["peak_rss_mb"]), size, steps]
            params = r["checkpoint"]["parameters"] / GB
            lines.append(f"| {name} | {params:.2f} B | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runtime_table(results: dict) -> str:
    lines = ["| model | engine | prompt (image rows) | TTFT ms (CPU ms) | of which image ms | decode tok/s (per CPU s) "
             "| peak RSS | load s | greedy tokens = HF fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        hf_tokens = r["hf"].get("fp32", {}).get("tokens")
        rows = [(f"Aerie {kind}", m) for kind, m in r["runtime"].items()]
        rows += [(f"HF transformers {dtype}, decoder only", m) for dtype, m in r["hf"].items()]
        for engine, m in rows:
            if "skipped" in m or "error" in m:
                lines.append(f"| {name} | {engine} | {m.get('error') or 'skipped: ' + m['skipped']} | | | | | | |")
                continue
            same = "–"
            if hf_tokens is not None:
                agree = next((i for i, (a, b) in enumerate(zip(m["tokens"], hf_tokens)) if a != b), len(hf_tokens))
                same = f"{agree} of {len(hf_tokens)}"
            cells = [
                f"{m['prompt_tokens']} ({m['image_tokens']})" if "prompt_tokens" in m else "the same embeddings",
                f"{statistics.median(m['ttft_ms']):.0f} ({statistics.median(m['ttft_cpu_ms']):.0f})",
                f"{statistics.median(m['image_ms']):.0f}" if "image_ms" in m else "– (prefill only)",
                f"{statistics.median(m['tok_s']):.2f} ({statistics.median(m['tok_s_cpu']):.2f})",
                gb(m["peak_rss_mb"]), f"{m['load_s']:.1f}", same,
            ]
            lines.append(f"| {name} | {engine} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_rows(results: dict) -> list[dict]:
    """Every finished build with its model's size, smallest model first."""
    rows = [{"model": name, "params_b": r["checkpoint"]["parameters"] / GB, "checkpoint_gb": r["checkpoint"]["bytes"] / GB,
             "engine": kind, "build_s": b["wall_s"], "peak_rss_gb": b["peak_rss_mb"] * 2**20 / GB}
            for name, r in results.items() for kind, b in r["builds"].items() if "engine_bytes" in b]
    return sorted(rows, key=lambda row: row["params_b"])


def cost_table(rows: list[dict]) -> str:
    """Build time and memory against size; the last column is the bound the 1B build must meet."""
    lines = ["| model | params | engine | build s | s per B params | peak RSS | peak RSS / checkpoint | "
             "within 1.5 x checkpoint + 1.5 GB |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        bound = 1.5 * row["checkpoint_gb"] + 1.5
        lines.append(f"| {row['model']} | {row['params_b']:.2f} B | {row['engine']} | {row['build_s']:.0f} | "
                     f"{row['build_s'] / row['params_b']:.0f} | {row['peak_rss_gb']:.2f} GB | "
                     f"{row['peak_rss_gb'] / row['checkpoint_gb']:.1f} | "
                     f"{'yes' if row['peak_rss_gb'] <= bound else 'no'} ({bound:.1f} GB) |")
    return "\n".join(lines)


def cost_plot(rows: list[dict], path: Path) -> None:
    """Build time and peak RSS against parameters, one line per engine kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_ax, rss_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    for kind in dict.fromkeys(row["engine"] for row in rows):
        mine = [row for row in rows if row["engine"] == kind]
        x = [row["params_b"] for row in mine]
        time_ax.plot(x, [row["build_s"] / 60 for row in mine], "o-", label=kind)
        rss_ax.plot(x, [row["peak_rss_gb"] for row in mine], "o-", label=kind)
    time_ax.set(xlabel="parameters (B)", ylabel="build wall time (min)", title="build time")
    rss_ax.set(xlabel="parameters (B)", ylabel="peak RSS (GB)", title="build peak memory")
    for ax in (time_ax, rss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("presets", nargs="*", help=f"bench/random_checkpoint.py presets: {', '.join(PRESETS)}")
    p.add_argument("--work", type=Path, default=ROOT / ".tmp" / "realsize", help="checkpoints, engines and results")
    p.add_argument("--float-dtype", choices=("fp32", "fp16"), default="fp32", help="the float engine (default fp32)")
    p.add_argument("--engines", nargs="+", choices=("float", "int4_awq"), default=["float", "int4_awq"],
                   help="engines to build and measure (default: both; a 7B float engine takes hours and 27 GB here)")
    p.add_argument("--build-args", type=shlex.split, default=[], help="extra build.py flags, one quoted string")
    p.add_argument("--hf-dtypes", nargs="*", choices=list(HF_DTYPES), default=list(HF_DTYPES),
                   help="HF transformers rows (default: fp32 bf16; none: no HF rows)")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per run (default 32)")
    p.add_argument("--runs", type=int, default=1, help="timed runs after one warm-up (default 1)")
    p.add_argument("--keep", action="store_true", help="keep the engines (default: deleted once measured)")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        set_threads()  # the workers only: build.py runs with the threads it chooses
        kind, kwargs = args.worker
        print(json.dumps({"runtime": measure_runtime, "hf": measure_hf}[kind](**json.loads(kwargs))))
        return
    unknown = [name for name in args.presets if name not in PRESETS]
    if unknown or not args.presets:
        p.error(f"name presets to measure ({', '.join(PRESETS)}){'; unknown: ' + ', '.join(unknown) if unknown else ''}")
    if args.new_tokens < 2 or args.runs < 1:
        p.error("--new-tokens must be at least 2 and --runs at least 1")
    work = args.work.resolve()
    (work / "engines").mkdir(parents=True, exist_ok=True)
    image = bench_image(work)
    command = shlex.join(["python", "bench/real_size.py", *sys.argv[1:]])
    header = (f"# real-size benchmark, {date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} "
              f"cores, {available_memory() / GB:.0f} GB available; runtime and HF: 1 thread, one {IMAGE_SIDE}x{IMAGE_SIDE} "
              f"image, {args.new_tokens} greedy tokens, {args.runs} run(s) after a warm-up\n# command: {command}")
    print(header, flush=True)
    results = {}
    for name in args.presets:
        try:
            results[name] = run_preset(name, args, work, image)
        except RuntimeError as e:  # its checkpoint could not be written: the other presets still run
            print(f"  {name}: {e}", flush=True)
    rows = cost_rows(results)
    report = (f"{header}\n\n### Checkpoints\n\n{checkpoint_table(results)}\n\n### Builds\n\n{build_table(results)}\n\n### On the CPU\n\n{runtime_table(results)}\n\n"
              f"### Cost curve\n\n{cost_table(rows)}\n")
    stem = work / f"real_size-{date.today()}"
    if rows:
        cost_plot(rows, stem.with_name(stem.name + "-cost.png"))
    stem.with_suffix(".md").write_text(report)
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "date": str(date.today()),
                                                    "machine": platform.platform(), "results": results}, indent=1))
    print(f"\n{report}\nwritten: {stem}.md, {stem}.json" + (f", {stem}-cost.png" if rows else ""), flush=True)


if __name__ == "__main__":
    main()
