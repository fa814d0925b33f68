"""An HTTP error with OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from ..errors import AerieError, ContextOverflowError, ImageError
from .scheduler import EngineFailure, QueueFull, RequestTimeout, ShuttingDown

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
         404: "invalid_request_error", 405: "invalid_request_error",
         408: "timeout_error", 411: "invalid_request_error", 413: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def from_aerie_error(error: AerieError, prompt_param: str = "messages") -> ApiError:
    """The HTTP status and code for an error the scheduler or the pipeline raised; `prompt_param` is the field
    holding the prompt ("messages", or a completion's "prompt")."""
    if isinstance(error, QueueFull):
        return ApiError(429, str(error), code="queue_full")
    if isinstance(error, RequestTimeout):
        return ApiError(408, str(error), code="timeout")
    if isinstance(error, ShuttingDown):
        return ApiError(503, str(error), code="unavailable")
    if isinstance(error, EngineFailure):
        return ApiError(500, str(error), code="engine_error")
    if isinstance(error, ContextOverflowError):
        return ApiError(400, str(error), param=prompt_param, code="context_length_exceeded")
    if isinstance(error, ImageError):
        return ApiError(400, str(error), param=prompt_param, code="invalid_image")
    return ApiError(400, str(error), param=prompt_param, code="invalid_request")
