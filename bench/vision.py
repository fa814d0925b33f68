"""Time to first token with one image, and the vision graph alone, per family: Aerie (ONNX Runtime vision
graph + decoder engine) against the PyTorch model (Hugging Face eager), 1 thread, same random weights.

Run `python bench/vision.py [--runs 3]`, or with the decode benchmark: `python bench/decode.py --vision`. Each family gets a bench-size random model: the 110m Llama
shape of the decoder benchmark as its decoder (Qwen2 for Eagle2.5) and a vision part of a stated size
(EVE: its published PEL width 1024 at 672 px; Eagle2.5: a SigLIP-base tower, 448 px tile; Eagle v1: the
tiny test experts, 128 px: the real five experts are too large for this machine).
TTFT = preprocessing + vision + prefill of the prompt with the image rows + the first token.

Aerie runs three ways: fp32 vision graph and fp32 decoder; fp32 vision and the INT4 decoder as `build.py --quant
int4_awq` writes it (bench/decode.py's RTN stand-in for AWQ's codes); and that INT4 decoder behind the vision
graph with its MatMuls in INT8 as `build.py --quant int4_awq --quant-vision int8` writes it (quant/vision.py:
int8 weights per output channel, activations quantized per call; ORT's integer kernels use VNNI where the CPU
has it). The INT8 rows are compared with the fp32
graph's (max abs difference over the rows' largest magnitude, cosine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.decode import ROOT, SIZES, VOCAB, now, rtn_int4_linears, set_threads  # noqa: E402
from quant.vision import quantize_vision_int8_cpu  # noqa: E402

DECODER = {k: v for k, v in SIZES["110m"].items() if k != "vocab_size"}


VARIANTS = {"aerie": "fp32", "aerie_int4": "fp32 vision, INT4 decoder",
            "aerie_int4_int8vision": "INT8 vision, INT4 decoder"}


def bench_config(family: str) -> tuple[dict, str]:
    """The family's bench model config and a line saying what its vision part is."""
    from models.tiny import tiny_eagle2_5_config, tiny_eagle_v1_config, tiny_eve_config

    if family == "eve":
        config = tiny_eve_config(VOCAB, **DECODER, mm_hidden_size=1024, pel_num_heads=16, image_size=672,
                                 image_size_clip=336, clip_vision_config=None)
        return config, "PEL 1024 wide, 672 px canvas"
    if family == "eagle2_5":
        siglip = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=448, patch_size=14)
        text = dict(architectures=["Qwen2ForCausalLM"], vocab_size=VOCAB, max_position_embeddings=2048,
                    rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, eos_token_id=2, **DECODER)
        config = tiny_eagle2_5_config(VOCAB, vision_config=siglip, text_config=text, force_image_size=448,
                                      max_dynamic_tiles=1)
        return config, "SigLIP-base (12 x 768), one 448 px tile"
    return tiny_eagle_v1_config(VOCAB, **DECODER), "tiny test experts (X5, 128 px, 16 tokens)"


def prepare(work: Path, family: str):
    """The random model and, once, its exported vision graph and decoder."""
    import torch

    from export.decoder import export_decoder
    from export.vision import export_vision
    from models.checkpoint import build_model

    torch.manual_seed(0)
    config, what = bench_config(family)
    model = build_model(config).eval()
    engine_dir = work / f"vision_{family}"
    if not (engine_dir / "decoder.json").is_file():
        print(f"  exporting {family} ...", flush=True)
        with torch.no_grad():
            export_vision(model, engine_dir / "vision")
            spec = export_decoder(model.decoder, engine_dir, max_length=1024)
        (engine_dir / "decoder.json").write_text(json.dumps(spec, indent=2))
    int4_dir = work / f"vision_{family}_int4"
    if not (int4_dir / "decoder.json").is_file():
        with torch.no_grad():
            spec = export_decoder(model.decoder, int4_dir, max_length=1024, quantized=rtn_int4_linears(model.decoder))
        (int4_dir / "decoder.json").write_text(json.dumps(spec, indent=2))
    int8_vision = engine_dir / "vision_int8" / "model.onnx"
    if not int8_vision.is_file():
        quantize_vision_int8_cpu(engine_dir / "vision" / "model.onnx", int8_vision)
    return model, engine_dir, int4_dir, int8_vision, what


def run_family(work: Path, family: str, runs: int) -> dict:
    import torch
    from transformers import DynamicCache

    from runtime.backends.ort_decoder import OrtDecoder
    from runtime.backends.ort_vision import OrtVisionEngine
    from runtime.preprocess import preprocess_image

    torch.set_num_threads(1)
    model, engine_dir, int4_dir, int8_vision, what = prepare(work, family)
    spec = model.preprocess_spec()
    vision = OrtVisionEngine(engine_dir / "vision" / "model.onnx", threads=1)
    vision_int8 = OrtVisionEngine(int8_vision, threads=1)
    decoder, decoder_int4 = (OrtDecoder(d, json.loads((d / "decoder.json").read_text()), threads=1, max_length=1024)
                             for d in (engine_dir, int4_dir))
    pixels = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    rows = preprocess_image(image, spec).num_tokens
    rng = np.random.default_rng(1234)
    ids = np.concatenate([rng.integers(3, VOCAB, 20), VOCAB + np.arange(rows), rng.integers(3, VOCAB, 12)])

    def engine(vision_engine, decoder_engine):
        def once():
            start = now()
            table = vision_engine.encode(preprocess_image(image, spec).trimmed())
            seen = now()
            token = int(decoder_engine.prefill(0, ids, table).argmax())
            decoder_engine.release(0)
            return token, start, seen, now()
        return once

    @torch.no_grad()
    def hf():
        start = now()
        inputs = preprocess_image(image, spec)
        table = model.image_table([inputs])
        seen = now()
        embeds = model.embed(torch.from_numpy(ids)[None], table)
        cache = DynamicCache(config=model.decoder.config)
        token = int(model.decoder(inputs_embeds=embeds, past_key_values=cache, use_cache=True).logits[0, -1].argmax())
        return token, start, seen, now()

    engines = (("hf", hf), ("aerie", engine(vision, decoder)), ("aerie_int4", engine(vision, decoder_int4)),
               ("aerie_int4_int8vision", engine(vision_int8, decoder_int4)))
    times: dict[str, dict[str, list[float]]] = {}
    tokens = {}
    for name, once in engines:
        tokens[name] = once()[0]  # warm-up
        times[name] = {"vision_ms": [], "ttft_ms": [], "vision_cpu_ms": [], "ttft_cpu_ms": []}
    for _ in range(runs):  # interleaved, so all see the same machine load
        for name, once in engines:
            token, start, seen, end = once()
            assert token == tokens[name], "a timed run gave another first token than the warm-up"
            for k, suffix in ((0, ""), (1, "_cpu")):
                times[name][f"vision{suffix}_ms"].append(1000 * (seen[k] - start[k]))
                times[name][f"ttft{suffix}_ms"].append(1000 * (end[k] - start[k]))
    medians = {name: {key: statistics.median(v) for key, v in t.items()} for name, t in times.items()}
    pixels_in = preprocess_image(image, spec).trimmed()
    rows32, rows8 = vision.encode(pixels_in), vision_int8.encode(pixels_in)
    flat32, flat8 = rows32.ravel().astype(np.float64), rows8.ravel().astype(np.float64)
    int8_rows = {"max_abs_diff_rel": float(np.abs(rows8 - rows32).max() / np.abs(rows32).max()),
                 "cosine": float(flat32 @ flat8 / np.linalg.norm(flat32) / np.linalg.norm(flat8))}
    return {"family": family, "vision": what, "image_tokens": int(rows), "prompt_tokens": int(ids.size),
            "same_first_token": tokens["hf"] == tokens["aerie"], "first_tokens": tokens, "int8_rows": int8_rows,
            **{name: medians[name] for name in medians}}


def run_vision_benchmarks(work: Path, runs: int) -> list[dict]:
    results = []
    for family in ("eve", "eagle2_5", "eagle_v1"):
        print(f"\n## {family}: TTFT with one 800x600 image", flush=True)
        results.append(run_family(work, family, runs))
    print("\n| family | vision part | image tokens / prompt | Aerie | vision ms HF -> Aerie (CPU) | TTFT ms HF -> "
          "Aerie (CPU) | TTFT / HF's (CPU) | first token = HF's |\n|---|---|---|---|---|---|---|---|")
    for r in results:
        hf = r["hf"]
        for name, label in VARIANTS.items():
            ae = r[name]
            print(f"| {r['family']} | {r['vision']} | {r['image_tokens']} / {r['prompt_tokens']} | {label} | "
                  f"{hf['vision_ms']:.0f} -> {ae['vision_ms']:.0f} ({hf['vision_cpu_ms']:.0f} -> {ae['vision_cpu_ms']:.0f}) | "
                  f"{hf['ttft_ms']:.0f} -> {ae['ttft_ms']:.0f} ({hf['ttft_cpu_ms']:.0f} -> {ae['ttft_cpu_ms']:.0f}) | "
                  f"{ae['ttft_ms'] / hf['ttft_ms']:.2f} ({ae['ttft_cpu_ms'] / hf['ttft_cpu_ms']:.2f}) | "
                  f"{r['first_tokens'][name] == r['first_tokens']['hf']} |", flush=True)
    print("\nINT8 vision rows against fp32: " + "; ".join(
        f"{r['family']} max abs diff {100 * r['int8_rows']['max_abs_diff_rel']:.1f}% of the largest row value, "
        f"cosine {r['int8_rows']['cosine']:.5f}" for r in results))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Time to first token with one image, Aerie vs PyTorch, per family")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per engine (after one warm-up)")
    parser.add_argument("--work", default=str(ROOT / ".tmp" / "bench"), help="exported engines are kept here")
    args = parser.parse_args()
    set_threads()
    print(f"# command: python bench/vision.py {' '.join(sys.argv[1:])}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    run_vision_benchmarks(Path(args.work), args.runs)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
