"""`build.py --quant MODE`: quantize a freshly built engine directory, from one calibration.

build.py builds and self-checks the float ONNX Runtime engine first, then calls `quantize_engine`, which adds

    quantization/
      trtllm_checkpoint/   config.json + rank0.safetensors (FP8, W4A16_AWQ or W4A8_AWQ) for trtllm-build
      hf_checkpoint/       the whole model, language model quantized, hf_quant_config.json (vLLM, SGLang)
      vision_fp8/ | vision_int8/   model.onnx: the vision graph with Q/DQ nodes, for TensorRT
      report.json, report.md, comparison.{md,png,json}, <row>/answers.jsonl
and, for int4_awq, replaces decoder/model.onnx with the INT4 (MatMulNBits) graph built from the TensorRT-LLM
checkpoint's integers. FP8 needs an FP8 GPU: the CPU engine of an fp8 build stays float, and the report
measures FP8 with modelopt's fake quantization. The manifest is rewritten last, with the report's summary.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from runtime.eval.benchmarks import get_benchmark
from runtime.eval.compare import compare_backends
from runtime.eval.predictors import Request, engine_predictor
from runtime.eval.runner import greedy
from runtime.manifest import read_manifest, write_manifest

from .errors import QuantizationError
from .modes import BLOCK_SIZES, MODES, get_mode
from .report import Gate, Report, Row

QUANT_DIR = "quantization"
BENCHMARK = "synthetic"
Step = Callable[[str], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class QuantOptions:
    mode: str
    calib_data: Path | None = None  # LLaVA-format JSON; None: a synthetic split generated for the build
    calib_images: Path | None = None
    calib_samples: int = 64
    calib_max_length: int = 512
    calib_text_only: bool = False  # leave the image rows out of the decoder's calibration (for comparison only)
    vision: str | None = None  # "fp8", "int8", "none"; None: fp8 with FP8 activations, none for int4_awq
    kv_cache_fp8: bool = False
    group_size: int = 128
    checkpoint_dtype: str = "float16"
    eval_data: Path | None = None  # synthetic-benchmark JSON; None: the synthetic test split
    eval_images: Path | None = None
    eval_limit: int | None = None
    metric_questions: int = 32  # questions for token agreement and KL
    metric_tokens: int = 16
    max_drop_points: float = 2.0
    accept_drop: bool = False
    threads: int | None = None  # torch threads while quantizing and evaluating (None: torch's default)
    progress: bool = True
    verbose: bool = False

    @property
    def vision_mode(self) -> str | None:
        if self.vision is None:
            return "fp8" if get_mode(self.mode).fp8_activations else None
        return None if self.vision == "none" else self.vision


def add_quant_arguments(p: argparse.ArgumentParser) -> None:
    """build.py's quantization flags."""
    g = p.add_argument_group("quantization (docs/quantization.md)")
    g.add_argument("--quant", choices=tuple(MODES), help="quantize the decoder (and the vision graph) after the build")
    g.add_argument("--calib-data", type=Path, help="LLaVA-format JSON with images to calibrate on "
                   "(default: a synthetic split generated for the build)")
    g.add_argument("--calib-images", type=Path, help="image folder of --calib-data (default: beside it)")
    g.add_argument("--calib-samples", type=int, default=64, help="calibration samples (default: 64)")
    g.add_argument("--calib-max-length", type=int, default=512, help="tokens per calibration sample (default: 512)")
    g.add_argument("--calib-text-only", action="store_true", help="calibrate the decoder on the prompts without "
                   "their image rows, as text-only toolchains do (to measure the difference; not recommended)")
    g.add_argument("--quant-vision", choices=("fp8", "int8", "none"),
                   help="vision graph Q/DQ for TensorRT (default: fp8 for fp8 and w4a8_awq, none for int4_awq)")
    g.add_argument("--kv-cache-fp8", action="store_true", help="FP8 KV cache in the TensorRT-LLM checkpoint")
    g.add_argument("--awq-group-size", type=int, choices=BLOCK_SIZES, default=128, help="INT4 group size (default: 128)")
    g.add_argument("--eval-data", type=Path, help="synthetic-benchmark JSON for the accuracy report "
                   "(default: the synthetic test split)")
    g.add_argument("--eval-images", type=Path, help="image folder of --eval-data (default: beside it)")
    g.add_argument("--eval-limit", type=int, help="only the first N questions of the accuracy report")
    g.add_argument("--max-accuracy-drop", type=float, default=2.0,
                   help="fail the build when accuracy falls more than this many points below fp32 (default: 2)")
    g.add_argument("--accept-accuracy-drop", action="store_true", help="keep the engine whatever the accuracy drop")
    g.add_argument("--quant-threads", type=int, help="PyTorch threads for calibration and the fake-quant evaluation "
                   "(default: PyTorch's; 1 is fastest for small models on shared cores)")
    g.add_argument("--quant-verbose", action="store_true", help="show nvidia-modelopt's own output")


def quant_options(args: argparse.Namespace) -> QuantOptions | None:
    """The options build.py's flags chose, or None without --quant."""
    if not args.quant:
        return None
    for name in ("calib_samples", "calib_max_length", "eval_limit", "quant_threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise QuantizationError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return QuantOptions(
        mode=args.quant, calib_data=args.calib_data, calib_images=args.calib_images, calib_samples=args.calib_samples,
        calib_max_length=args.calib_max_length, calib_text_only=args.calib_text_only, vision=args.quant_vision,
        kv_cache_fp8=args.kv_cache_fp8, group_size=args.awq_group_size, eval_data=args.eval_data,
        eval_images=args.eval_images, eval_limit=args.eval_limit, max_drop_points=args.max_accuracy_drop, accept_drop=args.accept_accuracy_drop,
        threads=args.quant_threads, verbose=args.quant_verbose,
    )


@contextlib.contextmanager
def data_files(options: QuantOptions, scratch: Path) -> Iterator[tuple[Path, Path]]:
    """(calibration JSON, evaluation JSON): the user's, or the synthetic val/test splits generated into a
    scratch folder (deterministic: the same questions as the synthetic benchmark's splits of seed 0)."""
    if options.calib_data is not None and options.eval_data is not None:
        yield options.calib_data, options.eval_data
        return
    from runtime.eval.synthetic import generate

    with tempfile.TemporaryDirectory(prefix=".aerie-synthetic-", dir=scratch) as tmp:
        test = options.eval_limit or 900
        generate(tmp, train=0, val=options.calib_samples, test=test, seed=0, progress=False)
        yield options.calib_data or Path(tmp) / "val.json", options.eval_data or Path(tmp) / "test.json"


@dataclass
class Candidate:
    """One row of the report before it is scored: engines (vision, decoder) and how to describe it."""

    name: str
    description: str
    engines: tuple
    predictor: object = None  # default: PartsPredictor over `engines`
    size: int | None = None
    speed: dict | None = None


def file_bytes(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def quantize_engine(checkpoint: Path, engine_dir: Path, options: QuantOptions, step: Step) -> Report:
    """Quantize the engine directory `engine_dir` (built from `checkpoint` by build.py) in place; returns the
    report. Raises AccuracyDropError (after writing everything) when the gate fails."""
    with data_files(options, engine_dir.parent) as (calib_data, eval_data):
        report = _quantize(checkpoint, engine_dir, options, step, calib_data, eval_data)
    report.gate.check()
    return report


def _quantize(checkpoint: Path, engine_dir: Path, options: QuantOptions, step: Step, calib_data: Path,
              eval_data: Path) -> Report:
    import torch

    from models.checkpoint import load_model
    from runtime.backends.ort_decoder import OrtDecoder
    from runtime.backends.ort_vision import OrtVisionEngine
    from runtime.tokenizer import Tokenizer

    from .calibration import calibration_set
    from .decoder import quantize_decoder, quiet_modelopt
    from .hf import write_quantized_hf_checkpoint
    from .metrics import agreement, decode_speed
    from .ort_int4 import export_int4_decoder
    from .predictors import EnginePair, PartsPredictor
    from .text_decoder import text_decoder
    from .torch_engines import TorchDecoder, TorchVision
    from .trtllm import write_quantized_trtllm_checkpoint
    from .vision import QdqVisionEngine, qdq_counts, quantize_vision_graph

    mode = get_mode(options.mode)
    qdir = engine_dir / QUANT_DIR
    manifest = read_manifest(engine_dir)
    decoder_part, vision_part = manifest.part("decoder"), manifest.part("vision")
    torch.manual_seed(0)
    if options.threads:
        torch.set_num_threads(options.threads)

    with step("calibration") as info:
        model = load_model(checkpoint).eval()
        tokenizer = Tokenizer.from_dir(engine_dir / manifest.tokenizer)
        calibration = calibration_set(model, tokenizer, calib_data, options.calib_images, options.calib_samples,
                                      options.calib_max_length, options.progress, options.calib_text_only)
        c = calibration.describe()
        info(f"{c['samples']} samples, {c['tokens']} tokens ({c['image_tokens']} from {c['images']} images)")
    with step("quantize") as info:
        qdecoder = quantize_decoder(text_decoder(model), mode, calibration, options.group_size, options.kv_cache_fp8,
                                    progress=options.progress, verbose=options.verbose)
        info(f"{mode.quant_algo}" + (", FP8 KV cache" if options.kv_cache_fp8 else ""))
    sizes: dict[str, int] = {}
    artifacts: dict[str, str] = {}
    with step("trtllm ckpt") as info:
        trt_dir = write_quantized_trtllm_checkpoint(qdecoder, qdir / "trtllm_checkpoint", options.checkpoint_dtype,
                                                    options.verbose)
        sizes["trtllm_checkpoint"] = file_bytes(trt_dir.iterdir())
        # What the unquantized checkpoint of the same dtype would take: every decoder weight at 2 bytes.
        sizes["trtllm_checkpoint_unquantized"] = 2 * sum(p.numel() for p in text_decoder(model).parameters())
        artifacts["trtllm_checkpoint"] = f"{QUANT_DIR}/trtllm_checkpoint"
        info(f"{sizes['trtllm_checkpoint'] / 1e6:.1f} MB (unquantized {options.checkpoint_dtype}: "
             f"{sizes['trtllm_checkpoint_unquantized'] / 1e6:.1f} MB)")
    with step("hf checkpoint") as info:
        hf_dir = write_quantized_hf_checkpoint(model, qdecoder, checkpoint, qdir / "hf_checkpoint",
                                               options.checkpoint_dtype, options.verbose)
        sizes["hf_checkpoint"] = file_bytes(p for p in hf_dir.iterdir() if p.suffix == ".safetensors")
        artifacts["hf_checkpoint"] = f"{QUANT_DIR}/hf_checkpoint"
        info(f"{sizes['hf_checkpoint'] / 1e6:.1f} MB weights + hf_quant_config.json")

    # Every checkpoint is written: from here on the fake-quant decoder is only run, so its weights are
    # quantized once (fold_weight) instead of at every forward.
    with quiet_modelopt(options.verbose):
        import modelopt.torch.quantization as mtq

        mtq.fold_weight(qdecoder)

    fp32_files = [engine_dir / f for f in decoder_part["files"]]
    sizes["ort_decoder_fp32"] = file_bytes(fp32_files)
    speeds: dict[str, dict] = {}
    ort_int4 = mode.int4 and not mode.fp8_activations
    if ort_int4:
        with step("fp32 speed") as info:
            speeds["fp32"] = decode_speed(OrtDecoder(engine_dir, decoder_part, max_batch=1))
            info(f"ORT fp32 decoder: {speeds['fp32']['decode_tokens_per_s']} tokens/s")
        with step("int4 decoder") as info:
            decoder_part = export_int4_decoder(model.decoder, trt_dir, engine_dir, decoder_part["dtype"],
                                               decoder_part["max_length"])
            manifest.parts["decoder"] = decoder_part
            sizes["ort_decoder"] = file_bytes(engine_dir / f for f in decoder_part["files"])
            speeds[mode.name] = decode_speed(OrtDecoder(engine_dir, decoder_part, max_batch=1))
            info(f"{sizes['ort_decoder'] / 1e6:.1f} MB (fp32 {sizes['ort_decoder_fp32'] / 1e6:.1f} MB), "
                 f"{speeds[mode.name]['decode_tokens_per_s']} tokens/s")

    vision_mode = options.vision_mode
    qdq_path = None
    if vision_mode:
        with step(f"vision {vision_mode}") as info:
            qdq_path = qdir / f"vision_{vision_mode}" / "model.onnx"
            files = quantize_vision_graph(engine_dir / vision_part["model"], qdq_path, vision_mode, calibration.pixels,
                                          verbose=options.verbose)
            sizes[f"vision_{vision_mode}"] = file_bytes(files)
            sizes["vision_fp32"] = file_bytes(engine_dir / f for f in vision_part["files"])
            artifacts[f"vision_{vision_mode}"] = str(qdq_path.relative_to(engine_dir))
            info(f"{sum(qdq_counts(qdq_path).values())} Q/DQ pairs, {sizes[f'vision_{vision_mode}'] / 1e6:.1f} MB")
    write_manifest(engine_dir, manifest)  # the engine directory is whole again: the ORT row opens it

    with step("accuracy") as info:
        pair = EnginePair(engine_dir)
        fp32 = (TorchVision(model), TorchDecoder(model.decoder))
        fake = (fp32[0], TorchDecoder(qdecoder))
        rows = [Candidate("fp32", "PyTorch fp32, the reference (size and decode speed: the float ONNX Runtime decoder "
                          "of this engine before quantization)", fp32, size=sizes["ort_decoder_fp32"],
                          speed=speeds.get("fp32"))]
        if ort_int4:
            rows.append(Candidate(f"{mode.name} ORT", "this engine directory on ONNX Runtime (CPU): the INT4 MatMulNBits "
                                  "decoder built from the TensorRT-LLM checkpoint's integers",
                                  (OrtVisionEngine(engine_dir / vision_part["model"]), OrtDecoder(engine_dir, decoder_part)),
                                  engine_predictor(engine_dir, f"{mode.name} ORT"), sizes["ort_decoder"],
                                  speeds[mode.name]))
        rows.append(Candidate(f"{mode.name} fake-quant", "nvidia-modelopt fake quantization of the decoder in PyTorch: "
                              "what the TensorRT-LLM checkpoint computes", fake, size=sizes["trtllm_checkpoint"]))
        if qdq_path is not None:
            qdq = QdqVisionEngine(qdq_path)
            rows.append(Candidate(f"{vision_mode} vision", f"the {vision_mode} Q/DQ vision graph on ONNX Runtime "
                                  "(optimization BASIC) with the fp32 decoder", (qdq, fp32[1])))
            rows.append(Candidate(f"{mode.name} + {vision_mode} vision", "the fake-quant decoder with the Q/DQ vision "
                                  "graph: the whole quantized model", (qdq, fake[1]), size=sizes["trtllm_checkpoint"]))
        bench = get_benchmark(BENCHMARK)
        scores = compare_backends([r.predictor or PartsPredictor(r.name, pair, *r.engines) for r in rows], BENCHMARK,
                                  eval_data, qdir, images=options.eval_images, limit=options.eval_limit,
                                  params=greedy(bench.max_new_tokens), progress=options.progress)
        questions = bench.read(eval_data, options.eval_images)[: options.metric_questions]
        requests = [Request(q.text, (q.image,) if q.image else ()) for q in questions]
        report_rows = [Row(r.name, r.description, scores[r.name],
                           None if r.engines is fp32 else agreement(pair, requests, fp32, r.engines,
                                                                     options.metric_tokens).to_dict(),
                           r.speed, r.size) for r in rows]
        gate_row = report_rows[1] if ort_int4 else report_rows[-1]
        gate = Gate(gate_row.name, report_rows[0].accuracy()["overall"], gate_row.accuracy()["overall"],
                    options.max_drop_points, options.accept_drop)
        info(f"{gate_row.name}: {100 * gate.value:.1f}% vs fp32 {100 * gate.reference:.1f}% ({0.0 - gate.drop_points:+.1f})")

    report = Report(
        mode.name,
        {"name": BENCHMARK, "data": str(eval_data) if options.eval_data else "synthetic test split (seed 0)",
         "questions": int(scores["fp32"].overall["count"])},
        report_rows, gate, calibration.describe(), sizes, artifacts,
    )
    if options.calib_data is None:
        report.calibration["data"] = "synthetic val split (seed 0)"
    comparison = (qdir / "comparison.md").read_text(encoding="utf-8")
    report.write(qdir, comparison)
    print(report.table(), end="", flush=True)
    manifest.build["quantization"] = {"options": {k: str(v) if isinstance(v, Path) else v
                                                  for k, v in asdict(options).items()},
                                      "quant_algo": mode.quant_algo, "report": f"{QUANT_DIR}/report.json",
                                      "gate": gate.to_dict(), "artifacts": artifacts}
    write_manifest(engine_dir, manifest)
    del model, qdecoder
    gc.collect()
    return report
