"""What the runner asks answers from: a `name` and `answer(requests, params) -> list[str]`.

`GeneratePredictor` wraps any generate(prompt, images, params) function (the PyTorch oracle's);
`engine_predictor` opens an engine directory with the runtime's Pipeline; `ServerPredictor` asks any
OpenAI-compatible server (`python -m runtime serve`, vLLM) through the official `openai` client.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from PIL import Image, UnidentifiedImageError

from ..errors import AerieError
from ..sampling import SamplingParams


@dataclass(frozen=True)
class Request:
    prompt: str
    images: tuple[str, ...]


class Predictor(Protocol):
    name: str

    def answer(self, requests: Sequence[Request], params: SamplingParams) -> list[str]:
        """One answer text per request, in order."""
        ...


class GeneratePredictor:
    """A predictor from a `generate(prompt, images, params) -> str` function, one request after another."""

    def __init__(self, name: str, generate: Callable[[str, list[str], SamplingParams], str]):
        self.name = name
        self.generate = generate

    def answer(self, requests: Sequence[Request], params: SamplingParams) -> list[str]:
        return [self.generate(r.prompt, list(r.images), params) for r in requests]


class PipelinePredictor:
    """An engine directory's Pipeline: a batch of requests is decoded together, up to the engine's batch."""

    def __init__(self, name: str, pipeline):
        self.name = name
        self.pipeline = pipeline

    def answer(self, requests: Sequence[Request], params: SamplingParams) -> list[str]:
        return self.pipeline.generate_batch([r.prompt for r in requests], [list(r.images) for r in requests], params)


def engine_predictor(engine_dir: str | Path, name: str | None = None, device: str = "cpu", max_batch: int = 4) -> Predictor:
    """Open an engine directory (manifest verified) as a predictor named after its folder by default."""
    from ..pipeline import Pipeline  # imported here: it loads the engine's backends

    return PipelinePredictor(name or Path(engine_dir).resolve().name, Pipeline(engine_dir, device=device, max_batch=max_batch))


class ServerError(AerieError):
    """An OpenAI-compatible server could not be reached or refused a request."""


def image_data_url(path: str) -> str:
    """A local image file as a data: URL, its media type read from the file itself (SEED's have no suffix)."""
    try:
        with Image.open(path) as image:
            kind = (image.format or "png").lower()
    except (UnidentifiedImageError, OSError) as e:
        raise ServerError(f"{path}: not a readable image ({e})") from None
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/{kind};base64,{data}"


def chat_messages(request: Request) -> list[dict]:
    """One user message: the images (as data: URLs), then the prompt; the server puts each image before
    the text, where the engine's Pipeline puts it too."""
    parts = [{"type": "image_url", "image_url": {"url": image_data_url(path)}} for path in request.images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": request.prompt}]}]


def sampling_fields(params: SamplingParams) -> dict:
    """The request fields for `params`; top_k and repetition_penalty only when set (vLLM's extensions)."""
    fields: dict = {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens}
    if params.seed is not None:
        fields["seed"] = params.seed
    if params.stop:
        fields["stop"] = list(params.stop)
    extra: dict = {}
    if params.top_k:
        extra["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        extra["repetition_penalty"] = params.repetition_penalty
    if extra:
        fields["extra_body"] = extra
    return fields


class ServerPredictor:
    """An OpenAI-compatible chat completions endpoint. A batch of requests is sent at once, one
    connection each, so the server can decode them together."""

    def __init__(self, base_url: str, model: str | None = None, name: str | None = None, api_key: str = "unused",
                 timeout: float = 600.0):
        try:
            from openai import OpenAI  # imported here: only scoring a server needs the client
        except ImportError:
            raise ServerError("scoring a server needs the openai client; pip install openai") from None
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2)
        self.base_url = base_url
        self.model = model or self.served_model()
        self.name = name or self.model

    def served_model(self) -> str:
        import openai

        try:
            models = [m.id for m in self.client.models.list().data]
        except openai.OpenAIError as e:
            raise ServerError(f"{self.base_url}: could not list the served models ({e}); is the server up and the "
                              "URL its /v1 base?") from None
        if len(models) != 1:
            raise ServerError(f"{self.base_url} serves {len(models)} models ({', '.join(models) or 'none'}); "
                              "name the one to score (--model, or URL#MODEL in evaluate.py)")
        return models[0]

    def complete(self, request: Request, params: SamplingParams) -> str:
        import openai

        try:
            response = self.client.chat.completions.create(model=self.model, messages=chat_messages(request),
                                                           **sampling_fields(params))
        except openai.OpenAIError as e:
            raise ServerError(f"{self.base_url}: the request failed ({e})") from None
        return response.choices[0].message.content or ""

    def answer(self, requests: Sequence[Request], params: SamplingParams) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, len(requests))) as pool:
            return list(pool.map(lambda r: self.complete(r, params), requests))
