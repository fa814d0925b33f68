"""The GPU checks in one script whose output goes into docs/gpu.md:

1. `oracle`  each checkpoint's PyTorch oracle in fp16 and bf16 against fp32 on the device: prompt logits
             (max abs diff, top-1 agreement) and the image table.
2. `kernel`  the Triton preprocessing kernel compiled: bit-exact against numpy, and its time against the
             numpy path (normalize + stack), for a 1280x720 image cut into 448 tiles.
3. `fp8`     an FP8 TensorRT-LLM checkpoint's linears through PyTorch's FP8 matrix multiply
             (torch._scaled_mm, SM89+) against the dequantized weights in float32.
4. `real_size` a real-size random checkpoint (bench/random_checkpoint.py's preset, written on the machine):
             Aerie's PyTorch engines (models/engines.py under the runtime's generation loop) in fp16 and bf16
             against HF transformers `generate` on the same GPU from the same prompt embeddings: time to first
             token with one image, decode tok/s, greedy tokens in common, peak GPU memory.

    python bench/gpu_checks.py --checkpoint examples/eve-tiny --fp8-checkpoint out/x/decoder/trtllm_checkpoint
    python bench/gpu_checks.py --real-size eagle2-1b --work /tmp/aerie-gpu     # only check 4: --only real_size

On a machine without CUDA, `--device cpu` runs check 1 on the CPU and check 2 in Triton's interpreter
(correctness only; no time is reported), and check 3 reports that it needs a GPU. Prints one JSON line per
result and a markdown summary with the date and the device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.checkpoint import load_model  # noqa: E402
from models.engines import modality_inputs  # noqa: E402
from runtime.preprocess import (SIGLIP_MEAN, SIGLIP_STD, PreprocessSpec, choose_grid, normalize,  # noqa: E402
                                preprocess_image, preprocess_tiles, tile_image)
from runtime.tokenizer import Tokenizer  # noqa: E402
from runtime.prompt import prompt_ids  # noqa: E402
from runtime.templates import get_template  # noqa: E402
from bench.random_checkpoint import PRESETS  # noqa: E402


def check_oracle(checkpoint: Path, device: str) -> list[dict]:
    from PIL import Image

    reference = load_model(checkpoint, torch.float32).to(device)
    tokenizer = Tokenizer.from_dir(checkpoint)
    image = preprocess_image(Image.new("RGB", (640, 480), (200, 30, 30)), reference.preprocess_spec())
    ids = prompt_ids(tokenizer, get_template(reference.chat_template), [("user", "What colour is the shape?")],
                     [image.num_tokens], reference.text_vocab_size())
    ids_t = torch.as_tensor(ids)[None].to(device)

    @torch.no_grad()
    def run(model):
        table = model.image_table([image])
        routing = modality_inputs(model.decoder, ids_t, model.text_vocab_size())  # EVEv2's image positions
        return table.float(), model.decoder(inputs_embeds=model.embed(ids_t, table), **routing).logits[0].float()

    table32, logits32 = run(reference)
    results = []
    for dtype in (torch.float16, torch.bfloat16):
        model = load_model(checkpoint, dtype).to(device)
        table, logits = run(model)
        results.append({
            "check": "oracle", "checkpoint": str(checkpoint), "dtype": str(dtype).removeprefix("torch."),
            "device": device, "prompt_tokens": len(ids),
            "logits_max_abs_diff": float((logits - logits32).abs().max()),
            "top1_agreement": float((logits.argmax(-1) == logits32.argmax(-1)).float().mean()),
            "image_table_max_abs_diff": float((table - table32).abs().max()),
        })
        del model
    return results


def check_kernel(device: str) -> dict:
    from PIL import Image

    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    from runtime.kernels.triton_preprocess import normalize_tiles

    spec = PreprocessSpec(kind="dynamic_tiles", image_size=448, mean=SIGLIP_MEAN, std=SIGLIP_STD, tokens_per_tile=256)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(720, 1280, 3), dtype=np.uint8))
    cols, rows = choose_grid(image.width, image.height, spec)
    t = spec.image_size
    resized = image.resize((t * cols, t * rows), Image.BICUBIC)
    thumb = image.resize((t, t), Image.BICUBIC)
    pixels = torch.from_numpy(np.array(resized)).to(device)
    thumb_pixels = torch.from_numpy(np.array(thumb)).to(device)
    out = torch.empty((cols * rows + 1, 3, t, t), dtype=torch.float32, device=device)

    def gpu_path():
        normalize_tiles(pixels, t, t, spec.mean, spec.std, out=out[:-1])
        normalize_tiles(thumb_pixels, t, t, spec.mean, spec.std, out=out[-1:])

    gpu_path()
    expected = preprocess_tiles(image, spec).pixel_values
    result = {"check": "kernel", "device": device, "tiles": cols * rows + 1,
              "bit_exact": bool(np.array_equal(out.cpu().numpy(), expected))}
    if device == "cuda":
        for _ in range(10):
            gpu_path()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(100):
            gpu_path()
        end.record()
        torch.cuda.synchronize()
        result["kernel_ms"] = start.elapsed_time(end) / 100
        # The host path it replaces: normalize every (already resized) tile in numpy, stack, copy to the device;
        # and the resize that both paths do on the host, for scale.
        tiles, _, _ = tile_image(image, spec)
        result["host_normalize_copy_ms"] = host_ms(lambda: torch.from_numpy(
            np.stack([normalize(tile, spec.mean, spec.std) for tile in tiles])).to(device))
        result["host_resize_ms"] = host_ms(lambda: tile_image(image, spec))
    return result


def host_ms(step, runs: int = 10) -> float:
    step()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(runs):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - begin) * 1000 / runs


def check_fp8(checkpoint_dir: Path, device: str) -> list[dict]:
    if device != "cuda" or torch.cuda.get_device_capability() < (8, 9):
        return [{"check": "fp8", "skipped": "torch._scaled_mm needs a CUDA GPU with compute capability 8.9 or newer"}]
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint_dir / "rank0.safetensors"))
    results = []
    for name, weight in tensors.items():
        if weight.dtype != torch.float8_e4m3fn or not name.endswith(".weight"):
            continue
        prefix = name.removesuffix("weight")
        w_scale = tensors[prefix + "weights_scaling_factor"].float().to(device).reshape(())
        a_scale = tensors[prefix + "activation_scaling_factor"].float().to(device).reshape(())
        w = weight.to(device)
        x = torch.randn(64, w.shape[1], device=device) * a_scale * 100
        reference = x @ (w.float() * w_scale).T
        x8 = (x / a_scale).clamp(-448, 448).to(torch.float8_e4m3fn)
        got = torch._scaled_mm(x8, w.T, scale_a=a_scale, scale_b=w_scale, out_dtype=torch.bfloat16).float()
        dequant_x = x8.float() * a_scale
        exact = dequant_x @ (w.float() * w_scale).T  # the same quantized inputs in float32: the kernel's own error
        results.append({"check": "fp8", "tensor": name, "shape": list(w.shape),
                        "max_rel_err_vs_fp32": float(((got - reference).abs().max() / reference.abs().max())),
                        "max_rel_err_vs_quantized_fp32": float(((got - exact).abs().max() / exact.abs().max()))})
    return results


def release_memory(cuda: bool) -> None:
    """Free what the last engine held, so the next one's peak GPU memory is its own."""
    import gc

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def check_real_size(preset: str, work: Path, device: str, new_tokens: int, runs: int) -> list[dict]:
    from bench.random_checkpoint import is_complete, write_checkpoint
    from bench.real_size import bench_image, load_hf_decoder, time_pipeline
    from bench.decode import hf_generate_timed
    from models.engines import pipeline_on_model
    from models.vlm import embed_with_images

    checkpoint = work / preset
    written = None
    if not is_complete(checkpoint):
        written = write_checkpoint(PRESETS[preset], checkpoint)
        print(f"  wrote {preset}: {written}", flush=True)
    image = str(bench_image(work))
    tokenizer = Tokenizer.from_dir(checkpoint)
    cuda = device == "cuda"
    results = []
    for dtype in (torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        record: dict = {"check": "real_size", "preset": preset, "dtype": name, "device": device,
                        "checkpoint_written_s": written and written["seconds"]}
        release_memory(cuda)
        start = time.perf_counter()
        model = load_model(checkpoint, dtype).to(device)
        record["aerie_load_s"] = round(time.perf_counter() - start, 1)
        pipe = pipeline_on_model(model, tokenizer, source=checkpoint, dtype=dtype, device=device)
        aerie, request = time_pipeline(pipe, image, new_tokens, runs, repeatable=not cuda)
        record["aerie_peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None
        del pipe, model
        release_memory(cuda)
        start = time.perf_counter()
        hf = load_hf_decoder(checkpoint, dtype).to(device)
        record["hf_load_s"] = round(time.perf_counter() - start, 1)
        ids = torch.as_tensor(request.input_ids)[None].to(device)
        with torch.no_grad():
            embeds = embed_with_images(hf.get_input_embeddings(), ids,
                                       torch.from_numpy(request.image_table).to(device))
        hf_result = hf_generate_timed(hf, new_tokens, runs, not cuda, inputs_embeds=embeds, attention_mask=torch.ones_like(ids))
        record["hf_peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None
        del hf, embeds
        same = next((i for i, (a, b) in enumerate(zip(aerie["tokens"], hf_result["tokens"])) if a != b), new_tokens)
        record.update({
            "prompt_tokens": aerie["prompt_tokens"], "image_tokens": aerie["image_tokens"],
            "aerie_ttft_ms": statistics.median(aerie["ttft_ms"]), "aerie_image_ms": statistics.median(aerie["image_ms"]),
            "hf_prefill_ms": statistics.median(hf_result["ttft_ms"]),
            "aerie_tok_s": statistics.median(aerie["tok_s"]), "hf_tok_s": statistics.median(hf_result["tok_s"]),
            "greedy_tokens_equal": same, "new_tokens": new_tokens, "runs": runs,
            "aerie_runs_repeating_warmup": aerie["repeats"], "hf_runs_repeating_warmup": hf_result["repeats"]})
        print(json.dumps(record), flush=True)
        results.append(record)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, action="append", default=[], help="HF checkpoint for the oracle check")
    parser.add_argument("--fp8-checkpoint", type=Path, action="append", default=[],
                        help="an FP8 TensorRT-LLM checkpoint directory (repeatable)")
    parser.add_argument("--real-size", action="append", default=[], choices=sorted(PRESETS),
                        help="a bench/random_checkpoint.py preset for check 4 (repeatable)")
    parser.add_argument("--work", type=Path, default=Path(".tmp/gpu"), help="where check 4 writes its checkpoints")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per engine in check 4, after one warm-up")
    parser.add_argument("--only", choices=["oracle", "kernel", "fp8", "real_size"], action="append",
                        help="run only these checks (default: every check its arguments allow)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    wanted = set(args.only or ["oracle", "kernel", "fp8", "real_size"])
    results = [r for c in args.checkpoint for r in check_oracle(c, args.device)] if "oracle" in wanted else []
    if "kernel" in wanted:
        results.append(check_kernel(args.device))
    for checkpoint in args.fp8_checkpoint if "fp8" in wanted else []:
        results += check_fp8(checkpoint, args.device)
    for preset in args.real_size if "real_size" in wanted else []:
        results += check_real_size(preset, args.work, args.device, args.new_tokens, args.runs)
    for r in results:
        print(json.dumps(r))
    print(f"\n{datetime.date.today().isoformat()}, {device_name}, torch {torch.__version__}")
    for r in results:
        print("| " + " | ".join(f"{k}: {v}" for k, v in r.items() if k != "check") + f" | ({r['check']}) |")


if __name__ == "__main__":
    main()
