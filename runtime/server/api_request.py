"""A `POST /v1/chat/completions` or `/v1/completions` body to the prompt, image references and sampling the
Pipeline takes; errors become 400s naming the field.

Messages (chat): parsed by runtime/messages.py (shared with the Pipeline); their image URLs are fetched within
the server's limits once the request is admitted (runtime/server/image_urls.py).

Prompt (completions, as vLLM and llama.cpp's server take it): one string (or a list of one), continued as
written: a RawPrompt (runtime/prompt.py), no chat template and no images. "echo" puts the prompt before the
answer; logprobs, suffix and best_of > 1 are refused.

Sampling: temperature (default 1, as OpenAI), top_p, max_tokens / max_completion_tokens, stop, seed, and
the extensions top_k and repetition_penalty (vLLM's names). frequency_penalty and presence_penalty are
accepted at 0 only (the sampler has the multiplicative repetition penalty instead); n must be 1.
Fields the server does not know are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..messages import MessageError, checked_text, conversation as parse_conversation
from ..prompt import Conversation, RawPrompt
from ..sampling import SamplingParams
from ..templates import Turn
from .api_error import ApiError
from .image_urls import ImageLimits


@dataclass(frozen=True)
class RequestLimits:
    max_tokens: int = 512  # the most new tokens a request may ask for (and the default)
    max_images: int = 4
    images: ImageLimits = ImageLimits()


@dataclass(frozen=True)
class ImageRef:
    """An image_url part, fetched and decoded once the request is admitted (runtime/server/http.py)."""

    url: str
    param: str


@dataclass
class ApiRequest:
    chat: bool  # /v1/chat/completions, or /v1/completions
    prompt: Conversation  # the messages' turns, or the completion's RawPrompt
    images: list[ImageRef]
    params: SamplingParams
    stream: bool
    include_usage: bool
    echo: str = ""  # put before the answer (a completion with "echo": true)

    @property
    def prompt_param(self) -> str:
        """The field that holds the prompt, named by errors about it."""
        return "messages" if self.chat else "prompt"


def parse_body(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply to be a request", code="invalid_json") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


def wrong_type(param: str, expected: str, value: Any) -> ApiError:
    got = "null" if value is None else type(value).__name__
    return ApiError(400, f"'{param}' must be {expected}, got {got}", param, "invalid_type")


def get_number(data: dict, name: str, default: float, low: float, high: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise wrong_type(name, "a number", value)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low:g} and {high:g}, got {value}", name, "invalid_value")
    return float(value)


def get_int(data: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(name, "an integer", value)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}, got {value}", name, "invalid_value")
    return value


def check_text(text: str, param: str) -> str:
    try:
        return checked_text(text, param)
    except MessageError as e:
        raise ApiError(400, str(e), e.param, e.code) from None


def get_bool(data: dict, name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise wrong_type(name, "true or false", value)
    return value


def sampling(data: dict, limits: RequestLimits) -> SamplingParams:
    cap = limits.max_tokens
    max_tokens = get_int(data, "max_completion_tokens", None, 1, 1 << 31)
    max_tokens = get_int(data, "max_tokens", max_tokens or cap, 1, 1 << 31)
    if max_tokens > cap:
        raise ApiError(400, f"max_tokens is {max_tokens}; this server generates at most {cap} tokens per request",
                       "max_tokens", "invalid_value")
    for name in ("frequency_penalty", "presence_penalty"):
        if get_number(data, name, 0.0, -2.0, 2.0) != 0.0:
            raise ApiError(400, f"'{name}' is not supported; use 'repetition_penalty' (1.0 = off, 1.1 = mild)",
                           name, "unsupported_parameter")
    if get_int(data, "n", 1, 1, 1 << 31) != 1:
        raise ApiError(400, "only n=1 is supported; send several requests instead", "n", "unsupported_parameter")
    for name in ("logprobs", "tools", "functions", "tool_choice", "function_call"):
        if data.get(name) not in (None, False, [], "none"):
            raise ApiError(400, f"'{name}' is not supported by this server", name, "unsupported_parameter")
    response_format = data.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ApiError(400, "only the text response_format is supported", "response_format", "unsupported_parameter")
    stop = data.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise wrong_type("stop", "a string or a list of up to 4 non-empty strings", data.get("stop"))
    for s in stop:
        check_text(s, "stop")
    top_k = get_int(data, "top_k", 0, -1, 1 << 31)
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=get_number(data, "temperature", 1.0, 0.0, 2.0),
        top_p=get_number(data, "top_p", 1.0, 1e-9, 1.0),
        top_k=max(top_k, 0),  # -1 (vLLM) and 0 both mean no limit
        repetition_penalty=get_number(data, "repetition_penalty", 1.0, 1e-3, 10.0),
        seed=get_int(data, "seed", None, 0, (1 << 63) - 1),
        stop=tuple(stop),
    )


def conversation(messages: Any, limits: RequestLimits) -> tuple[list[Turn], list[ImageRef]]:
    """The turns (runtime/messages.py) and references to their images, fetched once the request is admitted."""
    def image_ref(source: Any, param: str) -> ImageRef:
        if not isinstance(source, str):
            raise MessageError(f"'{param}' must be an image URL, got {type(source).__name__}", param, "invalid_type")
        return ImageRef(source, param)

    try:
        return parse_conversation(messages, image_ref, limits.max_images)
    except MessageError as e:
        raise ApiError(400, str(e), e.param, e.code) from None


def completion_prompt(data: dict) -> RawPrompt:
    """The completion's one prompt; what the server does not do (several prompts, token ids, logprobs, suffix,
    best_of) is refused rather than ignored."""
    for name in ("logprobs", "suffix"):
        if data.get(name) not in (None, ""):
            raise ApiError(400, f"'{name}' is not supported by this server", name, "unsupported_parameter")
    if get_int(data, "best_of", 1, 1, 1 << 31) != 1:
        raise ApiError(400, "only best_of=1 is supported", "best_of", "unsupported_parameter")
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, f"'prompt' holds {len(prompt)} prompts; this server takes one per request: send "
                            "several requests", "prompt", "unsupported_parameter")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (int, list)):
        raise ApiError(400, "'prompt' as token ids is not supported; send the prompt as text", "prompt",
                       "unsupported_parameter")
    text = prompt[0] if isinstance(prompt, list) and prompt else prompt
    if not isinstance(text, str):
        raise wrong_type("prompt", "a string (or a list of one string)", prompt)
    if not text:
        raise ApiError(400, "'prompt' is empty; send the text to continue", "prompt", "invalid_value")
    return RawPrompt(check_text(text, "prompt"))


def parse_request(body: bytes, limits: RequestLimits, model_name: str, chat: bool) -> ApiRequest:
    """Validate a chat completion (`chat`) or completion request; ApiError (400, or 404 for another model)
    naming the bad field."""
    data = parse_body(body)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise wrong_type("model", "a string", model)
    if model is not None and model != model_name:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {model_name!r}", "model",
                       "model_not_found")
    params = sampling(data, limits)
    stream = get_bool(data, "stream", False)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise wrong_type("stream_options", "an object", options)
    include_usage = get_bool(options or {}, "include_usage", False)
    if chat:
        turns, images = conversation(data.get("messages"), limits)
        return ApiRequest(True, turns, images, params, stream, include_usage)
    prompt = completion_prompt(data)
    echo = prompt.text if get_bool(data, "echo", False) else ""
    return ApiRequest(False, prompt, [], params, stream, include_usage, echo)
