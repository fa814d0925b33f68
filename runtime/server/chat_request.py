"""A `POST /v1/chat/completions` body to the conversation, image references and sampling the Pipeline takes.

Messages: "user" and "assistant" turns, content a string or a list of {"type": "text"} and
{"type": "image_url"} parts; each user message's images go before its text as `<image>\\n`, the layout the
models were trained on. "system" (and "developer") text is put before the first user message: the chat
templates carry their own fixed system prompt. Consecutive messages of one role are joined.

Sampling: temperature (default 1, as OpenAI), top_p, max_tokens / max_completion_tokens, stop, seed, and
the extensions top_k and repetition_penalty (vLLM's names). frequency_penalty and presence_penalty are
accepted at 0 only (the sampler has the multiplicative repetition penalty instead); n must be 1.
Fields the server does not know are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..sampling import SamplingParams
from ..templates import IMAGE_PLACEHOLDER, Turn, place_images
from .api_error import ApiError
from .image_urls import ImageLimits

ROLES = ("system", "developer", "user", "assistant")
SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\ud800" escape alone: not a character, nothing can encode it


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
class ChatRequest:
    turns: list[Turn]
    images: list[ImageRef]
    params: SamplingParams
    stream: bool
    include_usage: bool


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
    found = SURROGATE.search(text)
    if found:
        raise ApiError(400, f"'{param}' holds {ascii(found.group())}, half of a UTF-16 surrogate pair and not a "
                            "character; send valid Unicode text", param, "invalid_value")
    return text


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


def message_content(message: dict, where: str, limits: RequestLimits, images: list[ImageRef]) -> str:
    """A message's text, with `<image>\\n` before it for each of its images (added to `images`)."""
    content = message.get("content")
    if isinstance(content, str):
        return check_text(content, f"{where}.content")
    if not isinstance(content, list):
        raise wrong_type(f"{where}.content", "a string or a list of content parts", content)
    texts, count = [], 0
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise wrong_type(f"{at}.text", "a string", part.get("text"))
            texts.append(check_text(part["text"], f"{at}.text"))
        elif kind == "image_url":
            if message["role"] != "user":
                raise ApiError(400, "images may only be sent in user messages", at, "invalid_value")
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise wrong_type(f"{at}.image_url.url", "a string", url)
            if len(images) >= limits.max_images:
                raise ApiError(400, f"this server takes at most {limits.max_images} images per request", at,
                               "too_many_images")
            images.append(ImageRef(url, f"{at}.image_url"))
            count += 1
        else:
            raise ApiError(400, f"content part type {kind!r} is not supported (use 'text' or 'image_url')",
                           f"{at}.type", "unsupported_content")
    text = "\n".join(texts)
    if IMAGE_PLACEHOLDER in text and message["role"] != "assistant":  # an assistant's is text (runtime/prompt.py)
        raise ApiError(400, f"the text may not contain {IMAGE_PLACEHOLDER!r}; send images as image_url parts",
                       f"{where}.content", "invalid_value")
    return place_images(text, count) if count else text


def conversation(messages: Any, limits: RequestLimits) -> tuple[list[Turn], list[ImageRef]]:
    if not isinstance(messages, list):
        raise wrong_type("messages", "a list of messages", messages)
    if not messages:
        raise ApiError(400, "'messages' is empty; send at least one user message", "messages", "invalid_value")
    system: list[str] = []
    turns: list[list[str]] = []  # [role, text] with consecutive roles joined
    images: list[ImageRef] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise wrong_type(where, "an object", message)
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role",
                           "invalid_value")
        if role == "assistant" and message.get("content") is None:
            raise ApiError(400, "assistant messages without content (tool calls) are not supported",
                           f"{where}.content", "invalid_value")
        text = message_content(message, where, limits, images)
        if role in ("system", "developer"):
            system.append(text)
        elif turns and turns[-1][0] == role:
            turns[-1][1] += "\n" + text
        else:
            turns.append([role, text])
    if not turns or turns[0][0] != "user":
        raise ApiError(400, "the conversation must start with a user message (after any system message)",
                       "messages", "invalid_value")
    if turns[-1][0] != "user":
        raise ApiError(400, "the last message must be a user message", "messages", "invalid_value")
    if system:
        turns[0][1] = "\n\n".join([*system, turns[0][1]])
    return [(role, text) for role, text in turns], images


def parse_chat_request(body: bytes, limits: RequestLimits, model_name: str) -> ChatRequest:
    """Validate a chat completion request; ApiError (400, or 404 for another model) naming the bad field."""
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
    turns, images = conversation(data.get("messages"), limits)
    return ChatRequest(turns, images, params, stream, include_usage)
