"""Triton python-backend model `aerie_stream` (decoupled): one request in, its answer out piece by piece.

It holds the engine: a Pipeline whose vision engine is the `aerie_vision` model (called by BLS), and the
server's Scheduler (runtime/server/scheduler.py), whose thread runs the generation loop; `execute` only
reads each request and queues it, so requests join the running batch between decode steps. Every response
carries text_output (the next piece; the whole answer when the request's `stream` input is false),
finish_reason ("" until the last), prompt_tokens and completion_tokens so far. The last response has the
final flag; a refused request gets one error response with the final flag, with Triton's error code for
the HTTP status the OpenAI server would answer (INVALID_ARG: HTTP 400, gRPC INVALID_ARGUMENT, for a bad
request; UNAVAILABLE when the queue is full or the request ran out of time; INTERNAL for an engine fault).
A request's place in the queue is taken before its images are decoded, and its prompt's size is checked
before the engine thread sees it (runtime/server/admission.py), as in the OpenAI server.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np

from ..errors import AerieError, ImageError
from ..image_io import load_image
from ..manifest import read_manifest
from ..sampling import SamplingParams
from .repository import vision_io

TRITON_TO_NUMPY = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}
BASE64_TEXT = re.compile(rb"data:[^,]*,.*|[A-Za-z0-9+/=\s]+", re.S)  # the start of a base64 image sent as text


def model_parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def engine_directory(args: dict, params: dict[str, str]) -> Path:
    """The engine directory, from the model's `engine_dir` parameter (relative to the model's directory)."""
    return (Path(args["model_repository"]) / params.get("engine_dir", "../..")).resolve()


class TritonVision:
    """The VisionEngine protocol over a Triton model, called by BLS (inside a Triton model only)."""

    def __init__(self, pb_utils, model_name: str, engine_dir: Path):
        manifest = read_manifest(engine_dir)
        inputs, outputs = vision_io(engine_dir, manifest.part("vision"))
        self.pb, self.model_name = pb_utils, model_name
        self.input_name, self.input_dtype = inputs[0][0], TRITON_TO_NUMPY[inputs[0][1]]
        self.output_name = outputs[0][0]

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        pb = self.pb
        pixels = np.ascontiguousarray(pixel_values, dtype=self.input_dtype)
        request = pb.InferenceRequest(
            model_name=self.model_name, inputs=[pb.Tensor(self.input_name, pixels)],
            requested_output_names=[self.output_name],
            preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0))
        response = request.exec()
        if response.has_error():
            raise AerieError(f"the vision model {self.model_name!r} failed: {response.error().message()}")
        rows = pb.get_output_tensor_by_name(response, self.output_name).as_numpy()
        return rows.astype(np.float32).reshape(-1, rows.shape[-1])


# Triton's python backend resets the error code of a response a model receives through BLS to INTERNAL, so a
# refusal sent to the `aerie` model (which sets this request parameter) comes as an answer whose finish_reason
# is REFUSED + the code's name and whose text is the message; `aerie` turns it back into the error.
REFUSAL_AS_ANSWER = "aerie_refusal_as_answer"
REFUSED = "refused:"


class Responder:
    """A job's `emit` for Triton: events to responses on the request's sender, the last with the final flag."""

    def __init__(self, pb_utils, sender, stream: bool, refusal_as_answer: bool = False):
        self.pb, self.sender, self.stream = pb_utils, sender, stream
        self.refusal_as_answer = refusal_as_answer
        self.prompt_tokens = 0
        self.job = None

    def response(self, text: str, finish_reason: str, completion_tokens: int):
        pb = self.pb
        return pb.InferenceResponse(output_tensors=[
            pb.Tensor("text_output", np.array([[text.encode()]], dtype=np.object_)),
            pb.Tensor("finish_reason", np.array([[finish_reason.encode()]], dtype=np.object_)),
            pb.Tensor("prompt_tokens", np.array([[self.prompt_tokens]], dtype=np.int32)),
            pb.Tensor("completion_tokens", np.array([[completion_tokens]], dtype=np.int32)),
        ])

    def fail(self, error: AerieError) -> None:
        pb = self.pb
        code = error_code(pb, error)
        if self.refusal_as_answer:
            response = self.response(str(error), REFUSED + code.name, 0)
        else:
            response = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(error), code))
        self.sender.send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def __call__(self, kind: str, value) -> None:
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if self.sender.is_cancelled():
            self.send_cancelled()
            raise ConnectionAbortedError("cancelled by the client")  # the scheduler drops the job
        if kind == "started":
            self.prompt_tokens = int(value.request.input_ids.size)
        elif kind == "text" and self.stream:
            self.sender.send(self.response(value, "", len(self.job.seq.tokens)))
        elif kind == "done":
            text = "" if self.stream else value.text
            self.sender.send(self.response(text, value.finish_reason, len(value.token_ids)), flags=final)
        elif kind == "error":
            self.fail(value)

    def send_cancelled(self) -> None:
        pb = self.pb
        self.sender.send(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
            "the request was cancelled", pb.TritonError.CANCELLED)), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def error_code(pb_utils, error: AerieError) -> int:
    """Triton's code for the status the OpenAI server gives `error` (runtime/server/api_error.py)."""
    from ..server.api_error import from_aerie_error

    status = from_aerie_error(error).status
    codes = pb_utils.TritonError
    return codes.INVALID_ARG if status < 408 else codes.INTERNAL if status >= 500 and status != 503 else codes.UNAVAILABLE


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        from ..pipeline import Pipeline
        from ..server.image_urls import ImageLimits
        from ..server.scheduler import Scheduler

        self.pb = pb_utils
        params = model_parameters(args)
        engine_dir = engine_directory(args, params)
        vision = TritonVision(pb_utils, params["vision_model"], engine_dir) if params.get("vision_model") else None
        threads = int(params["threads"]) if params.get("threads") else None
        pipeline = Pipeline(engine_dir, device=params.get("device", "cpu"), threads=threads,
                            max_batch=int(params.get("max_batch", 4)), vision=vision)
        self.pipeline = pipeline
        self.max_tokens = int(params.get("max_tokens", 512))
        self.images = ImageLimits(max_pixels=int(params.get("max_image_pixels", 16_000_000)))
        self.timeout = float(params.get("request_timeout", 120))
        self.scheduler = Scheduler(pipeline, int(params.get("max_queue", 32))).start()

    def input(self, request, name: str) -> np.ndarray | None:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy().reshape(-1)

    def scalar(self, request, name: str, kind: type, default):
        values = self.input(request, name)
        return default if values is None or values.size == 0 else kind(values[0])

    def read(self, request) -> tuple[str, list[tuple[bytes, str]], SamplingParams, bool]:
        """The question, encoded images (image_input's, then image's; each with its input's name for errors),
        sampling and stream flag of a request; AerieError if any is bad."""
        text = self.input(request, "text_input")
        try:
            question = bytes(text[0]).decode("utf-8")
        except (TypeError, IndexError, UnicodeDecodeError):
            raise AerieError("text_input must hold one UTF-8 string (the question)") from None
        encoded = self.input(request, "image_input")
        stop = self.input(request, "stop")
        max_tokens = self.scalar(request, "max_tokens", int, self.max_tokens)
        if max_tokens > self.max_tokens:
            raise AerieError(f"max_tokens is {max_tokens}; this model generates at most {self.max_tokens} per request")
        floats = {name: self.scalar(request, name, float, default)
                  for name, default in (("temperature", 0.0), ("top_p", 1.0), ("repetition_penalty", 1.0))}
        bad = [name for name, value in floats.items() if not math.isfinite(value)]
        if bad:
            raise AerieError(f"{bad[0]} must be a finite number")
        seed = self.scalar(request, "seed", int, None)
        if seed is not None and seed < 0:
            raise AerieError(f"seed must be >= 0, got {seed}")
        try:
            params = SamplingParams(
                max_new_tokens=max_tokens, top_k=self.scalar(request, "top_k", int, 0), seed=seed,
                stop=tuple(bytes(s).decode("utf-8") for s in stop) if stop is not None else (), **floats)
        except (ValueError, UnicodeDecodeError) as e:
            raise AerieError(f"bad sampling input: {e}") from None
        images = [(bytes(data), f"image_input[{i}]") for i, data in enumerate([] if encoded is None else encoded)]
        return question, images + self.base64_images(request), params, self.scalar(request, "stream", bool, True)

    def base64_images(self, request) -> list[tuple[bytes, str]]:
        """The `image` input's images, each base64 or a data: URL (what JSON carries: HTTP generate)."""
        from ..server.api_error import ApiError
        from ..server.image_urls import decode_base64_image

        texts = self.input(request, "image")
        images = []
        for i, text in enumerate([] if texts is None else texts):
            try:
                data = decode_base64_image(bytes(text).decode("ascii", "replace").strip(), self.images, f"image[{i}]")
            except ApiError as e:
                raise ImageError(f"{e.param}: {e.message}") from None
            images.append((data, f"image[{i}]"))
        return images

    def decode(self, encoded: list[tuple[bytes, str]]) -> list:
        images = []
        for data, name in encoded:
            try:
                images.append(load_image(data, self.images.max_pixels, self.images.max_side))
            except ImageError as e:
                hint = " (base64 and data: URLs go in the `image` input)" if name.startswith("image_input") and \
                    BASE64_TEXT.fullmatch(data[:64]) else ""
                raise ImageError(f"{name}: {e}{hint}") from None
        return images

    def execute(self, requests):
        from ..server.admission import check_prompt_size
        from ..server.scheduler import Job

        for request in requests:
            sender = request.get_response_sender()
            refusal_as_answer = bool(json.loads(request.parameters() or "{}").get(REFUSAL_AS_ANSWER))
            job = None
            try:
                question, encoded, params, stream = self.read(request)
                turns = [("user", question)]
                check_prompt_size(self.pipeline, turns, len(encoded), self.scheduler.max_prompt_tokens)
                responder = Responder(self.pb, sender, stream, refusal_as_answer)
                job = Job(turns, [], params, responder, deadline=time.monotonic() + self.timeout, ready=not encoded)
                responder.job = job
                self.scheduler.submit(job)  # its place in the queue first: a full queue decodes nothing
                if encoded:
                    self.scheduler.ready(job, self.decode(encoded))
            except AerieError as e:
                if job is not None:
                    self.scheduler.cancel(job)
                Responder(self.pb, sender, False, refusal_as_answer).fail(e)
        return None

    def finalize(self) -> None:
        self.scheduler.stop()
