"""build.py's self-check of a quantized engine: the rows of the accuracy report (quant/report.py) made from what
the build has — the PyTorch model in float32 (the reference), the quantized checkpoint computed in PyTorch (what
TensorRT-LLM computes), the vision graph with Q/DQ nodes, and the engine itself — and the gate."""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
from pathlib import Path

from models.engines import pipeline_on_model
from runtime.pipeline import Pipeline
from runtime.preprocess import PreprocessSpec
from runtime.tokenizer import Tokenizer

from .fake_quant import fake_quant_decoder
from .modes import get_mode
from .quantize import Quantized, folder_bytes
from .report import AccuracyReport, Candidate, ReportOptions, default_questions
from .vision import QdqVisionEngine


class QuantCheck:
    """The report's two phases around the build: `score_torch` while the model is loaded, `score_engine` after."""

    def __init__(self, args: argparse.Namespace, model, tokenizer: Tokenizer, spec: PreprocessSpec,
                 quantized: Quantized, directory: Path, parameters: int, qdq_vision: Path | None = None):
        self.model, self.tokenizer, self.spec, self.quantized = model, tokenizer, spec, quantized
        self.qdq_vision = qdq_vision  # the vision graph with Q/DQ nodes, when the build wrote one
        self.mode = get_mode(quantized.mode)
        limit, metric_questions = default_questions(parameters)
        self.eval_data = args.eval_data
        self.options = dict(eval_images=args.eval_images, eval_limit=args.eval_limit or limit,
                            metric_questions=min(metric_questions, args.eval_limit or metric_questions),
                            max_drop_points=args.max_accuracy_drop, accept_drop=args.accept_accuracy_drop)
        self.directory = directory
        self.report: AccuracyReport | None = None
        # Answers and evaluation data live beside the engine until the report is finished: the report is written
        # into the engine after its manifest (it records the self-check; the runtime never reads it).
        self.scratch = Path(tempfile.mkdtemp(prefix=".aerie-report-", dir=directory.parent.parent))

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def open_report(self, eval_data: Path) -> AccuracyReport:
        q = self.quantized
        sizes = {"trtllm_checkpoint": folder_bytes(q.trtllm_checkpoint), "hf_checkpoint": folder_bytes(q.hf_checkpoint)}
        artifacts = {"trtllm_checkpoint": f"{q.directory.name}/trtllm_checkpoint",
                     "hf_checkpoint": f"{q.directory.name}/hf_checkpoint"}
        return AccuracyReport(self.mode.name, self.scratch / "report", ReportOptions(eval_data, **self.options),
                              q.record["calibration"], sizes, artifacts)

    def score_torch(self) -> str:
        """The PyTorch rows; returns the step's summary."""
        from runtime.eval.synthetic import generate

        if self.eval_data is None:  # the synthetic test split
            self.eval_data = generate(self.scratch / "data", train=0, val=0, test=self.options["eval_limit"] or 900,
                                      seed=0, progress=False) / "test.json"
        self.report = self.open_report(self.eval_data)
        reference = Candidate("fp32", "the PyTorch model in float32, the reference",
                              pipeline_on_model(self.model, self.tokenizer, self.spec, max_batch=1))
        others = []
        if not self.mode.ort_int4:
            fake = fake_quant_decoder(self.model.decoder, self.quantized.trtllm_checkpoint)
            others.append(Candidate(f"{self.mode.name} fake-quant", "the quantized TensorRT-LLM checkpoint computed in "
                                    "PyTorch: what the GPU engine computes",
                                    pipeline_on_model(self.model, self.tokenizer, self.spec, decoder=fake),
                                    self.report.sizes["trtllm_checkpoint"]))
        if self.qdq_vision is not None:
            kind = self.qdq_vision.parent.name.removeprefix("vision_")
            qdq = QdqVisionEngine(self.qdq_vision)
            self.report.artifacts[f"vision_{kind}"] = self.qdq_vision.relative_to(self.directory.parent).as_posix()
            self.report.sizes[f"vision_{kind}"] = folder_bytes(self.qdq_vision.parent)
            others.append(Candidate(f"{kind} vision", f"the {kind} Q/DQ vision graph on ONNX Runtime (optimization "
                                    "BASIC) with the float32 decoder",
                                    pipeline_on_model(self.model, self.tokenizer, self.spec, vision=qdq)))
            if not self.mode.ort_int4:
                others.append(Candidate(f"{self.mode.name} + {kind} vision", "the quantized checkpoint computed in "
                                        "PyTorch with the Q/DQ vision graph: the whole quantized model",
                                        pipeline_on_model(self.model, self.tokenizer, self.spec, vision=qdq,
                                                          decoder=fake), self.report.sizes["trtllm_checkpoint"]))
        self.report.score_torch(reference, others)
        self.gate_row = others[-1].name if others else None
        self.model = None  # the build frees the model next
        gc.collect()
        return f"{len(self.report.rows)} PyTorch rows: " + ", ".join(name for name, *_ in self.report.rows)

    def score_engine(self, engine_dir: Path) -> str:
        engine = None
        if self.mode.ort_int4:
            pipeline = Pipeline(engine_dir, max_batch=1)
            files = pipeline.manifest.part("decoder")["files"]
            int8_vision = pipeline.manifest.part("vision").get("quantization") == "int8"
            engine = Candidate(f"{self.mode.name} ORT", "this engine on ONNX Runtime (CPU): the INT4 MatMulNBits "
                               "decoder holding the TensorRT-LLM checkpoint's integers"
                               + (", behind the INT8 vision graph" if int8_vision else ""), pipeline,
                               sum((engine_dir / f).stat().st_size for f in files))
            self.gate_row = engine.name
        report = self.report.score_engine(engine, self.gate_row)
        shutil.copytree(self.scratch / "report", self.directory / "report", dirs_exist_ok=True)
        report.gate.check()
        g = report.gate
        return f"{g.row}: {100 * g.value:.1f}% vs fp32 {100 * g.reference:.1f}% ({-g.drop_points:+.1f} points), " \
               f"{report.benchmark['questions']} questions"
