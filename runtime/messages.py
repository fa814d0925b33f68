"""Chat messages as OpenAI and Hugging Face write them, to the conversation the Pipeline takes.

Messages: "user" and "assistant" turns, content a string or a list of parts: {"type": "text", "text"},
{"type": "image_url", "image_url": {"url"}} (OpenAI, vLLM, llama.cpp), {"type": "image", "image" | "url" |
"path" | "base64": ...} (Hugging Face chat templates) and {"type": "image_pil", "image_pil"} (vLLM). Each user
message's images go before its text as `<image>\\n`, the layout the models were trained on. "system" (and
"developer") messages, joined, become the conversation's first turn, which each chat template treats as its
upstream chat does (runtime/templates.py). Consecutive messages of one role are joined.

Images are read by the caller's `read_image(source, param)`, in order, as the parts are met: the server
fetches URLs within its limits (runtime/server/api_request.py), the Pipeline also takes paths and images.
"""

from __future__ import annotations

import re
from typing import Any, Callable, TypeVar

from .errors import AerieError
from .templates import IMAGE_PLACEHOLDER, Turn, place_images

ROLES = ("system", "developer", "user", "assistant")
# An image part's type -> the keys that may hold its source, in Hugging Face's order of preference.
IMAGE_PARTS = {"image_url": ("image_url",), "image": ("image", "url", "path", "base64"), "image_pil": ("image_pil",)}

SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\ud800" escape alone: not a character, nothing can encode it
T = TypeVar("T")


class MessageError(AerieError):
    """A message list that is not a conversation: `param` names the field, `code` says what is wrong."""

    def __init__(self, message: str, param: str, code: str):
        super().__init__(message)
        self.param, self.code = param, code


def wrong_type(param: str, expected: str, value: Any) -> MessageError:
    got = "null" if value is None else type(value).__name__
    return MessageError(f"'{param}' must be {expected}, got {got}", param, "invalid_type")


def checked_text(text: str, param: str) -> str:
    """`text` if it is valid Unicode: half a surrogate pair can't be encoded, so the tokenizer would fail on it."""
    found = SURROGATE.search(text)
    if found:
        raise MessageError(f"'{param}' holds {ascii(found.group())}, half of a UTF-16 surrogate pair and not a "
                           "character; send valid Unicode text", param, "invalid_value")
    return text


def is_messages(prompt: Any) -> bool:
    """Whether a prompt is a list of chat messages (dicts), rather than text or (role, text) turns."""
    return isinstance(prompt, list) and (not prompt or isinstance(prompt[0], dict))


def image_part_source(part: dict, kind: str, at: str) -> tuple[Any, str]:
    """The image an image part names, and the parameter it came from."""
    if kind == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        if not isinstance(url, str):
            raise wrong_type(f"{at}.image_url.url", "a string", url)
        return url, f"{at}.image_url"
    for key in IMAGE_PARTS[kind]:
        if part.get(key) is not None:
            value = part[key]
            if key == "base64":  # Hugging Face's bare base64, as a data: URL
                if not isinstance(value, str):
                    raise wrong_type(f"{at}.base64", "a string", value)
                value = f"data:;base64,{value}"
            return value, f"{at}.{key}"
    raise MessageError(f"an {kind} part needs one of {', '.join(IMAGE_PARTS[kind])}", at, "invalid_value")


def message_content(message: dict, where: str, read_image: Callable[[Any, str], T], images: list[T],
                    max_images: int | None) -> str:
    """A message's text, with `<image>\\n` before it for each of its images (read into `images`)."""
    content = message.get("content")
    if isinstance(content, str):
        return checked_text(content, f"{where}.content")
    if not isinstance(content, list):
        raise wrong_type(f"{where}.content", "a string or a list of content parts", content)
    texts, count = [], 0
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise wrong_type(f"{at}.text", "a string", part.get("text"))
            texts.append(checked_text(part["text"], f"{at}.text"))
        elif isinstance(kind, str) and kind in IMAGE_PARTS:  # a list or an object can't be looked up
            if message["role"] != "user":
                raise MessageError("images may only be sent in user messages", at, "invalid_value")
            source, param = image_part_source(part, kind, at)
            if max_images is not None and len(images) >= max_images:
                raise MessageError(f"this server takes at most {max_images} images per request", at,
                                   "too_many_images")
            images.append(read_image(source, param))
            count += 1
        else:
            raise MessageError(f"content part type {kind!r} is not supported (use 'text', 'image_url' or 'image')",
                               f"{at}.type", "unsupported_content")
    text = "\n".join(texts)
    if IMAGE_PLACEHOLDER in text and message["role"] != "assistant":  # an assistant's is text (runtime/prompt.py)
        raise MessageError(f"the text may not contain {IMAGE_PLACEHOLDER!r}; send images as image_url parts",
                           f"{where}.content", "invalid_value")
    return place_images(text, count) if count else text


def conversation(messages: Any, read_image: Callable[[Any, str], T],
                 max_images: int | None = None) -> tuple[list[Turn], list[T]]:
    """The turns of a message list and its images as `read_image` returns them; MessageError naming the
    bad field."""
    if not isinstance(messages, list):
        raise wrong_type("messages", "a list of messages", messages)
    if not messages:
        raise MessageError("'messages' is empty; send at least one user message", "messages", "invalid_value")
    system: list[str] = []
    turns: list[list[str]] = []  # [role, text] with consecutive roles joined
    images: list[T] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise wrong_type(where, "an object", message)
        role = message.get("role")
        if role not in ROLES:
            raise MessageError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role",
                               "invalid_value")
        if role == "assistant" and message.get("content") is None:
            raise MessageError("assistant messages without content (tool calls) are not supported",
                               f"{where}.content", "invalid_value")
        text = message_content(message, where, read_image, images, max_images)
        if role in ("system", "developer"):
            system.append(text)
        elif turns and turns[-1][0] == role:
            turns[-1][1] += "\n" + text
        else:
            turns.append([role, text])
    if not turns or turns[0][0] != "user":
        raise MessageError("the conversation must start with a user message (after any system message)",
                           "messages", "invalid_value")
    if turns[-1][0] != "user":
        raise MessageError("the last message must be a user message", "messages", "invalid_value")
    if system:
        turns.insert(0, ["system", "\n\n".join(system)])
    return [(role, text) for role, text in turns], images
