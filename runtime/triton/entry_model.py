"""Triton python-backend model `aerie`: plain request/response, for HTTP and gRPC `infer` clients.

Each request is forwarded to the decoupled `aerie_stream` model (BLS, with `stream` false) and its one
answer returned, or its refusal with its error code (runtime/triton/stream_model.py, REFUSAL_AS_ANSWER). The requests of a batch are forwarded at the same time, from a thread each, so they are
decoded together in aerie_stream's running batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .repository import REQUEST_OUTPUTS
from .stream_model import REFUSAL_AS_ANSWER, REFUSED, model_parameters


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import json

        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self.stream_model = model_parameters(args)["stream_model"]
        batch = max(1, json.loads(args["model_config"]).get("max_batch_size", 1))
        self.pool = ThreadPoolExecutor(max_workers=batch, thread_name_prefix="aerie-forward")

    def forward(self, request):
        pb = self.pb
        inputs = [*request.inputs(), pb.Tensor("stream", np.array([[False]], dtype=np.bool_))]
        bls = pb.InferenceRequest(model_name=self.stream_model, inputs=inputs,
                                  requested_output_names=[name for name, _, _ in REQUEST_OUTPUTS],
                                  parameters={REFUSAL_AS_ANSWER: True})
        answer = None
        for response in bls.exec(decoupled=True):
            if response.has_error():
                return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(response.error().message()))
            if response.output_tensors():
                answer = response
        if answer is None:
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                f"{self.stream_model} ended without an answer"))
        finish = pb.get_output_tensor_by_name(answer, "finish_reason").as_numpy().reshape(-1)[0].decode()
        if finish.startswith(REFUSED):  # its error code kept: INVALID_ARG is HTTP 400, gRPC INVALID_ARGUMENT
            message = pb.get_output_tensor_by_name(answer, "text_output").as_numpy().reshape(-1)[0].decode()
            code = getattr(pb.TritonError, finish[len(REFUSED):])
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, code))
        return pb.InferenceResponse(output_tensors=answer.output_tensors())

    def execute(self, requests):
        return list(self.pool.map(self.forward, requests))

    def finalize(self) -> None:
        self.pool.shutdown(wait=True)
