"""Shared by the serving tests (test_server_*, test_triton_*, test_demo_*): images as bytes and data: URLs,
an in-process OpenAI server on a free loopback port, raw HTTP requests, and a decoder gate that lets a test
hold the engine between decode steps (the real decoder still computes every token)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw

from runtime.pipeline import Pipeline
from runtime.server.api_request import RequestLimits
from runtime.server.http import Server, ServerOptions


def shapes_image(size: tuple[int, int] = (96, 64), colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    image = Image.new("RGB", size, (240, 240, 240))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w // 6, h // 6, w // 2, h * 5 // 6), fill=colour)
    draw.rectangle((w * 3 // 5, h // 4, w * 9 // 10, h * 3 // 4), fill=(30, 30, 200))
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image | bytes, media: str = "image/png") -> str:
    data = image if isinstance(image, bytes) else png_bytes(image)
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def user_message(text: str, *images: Image.Image) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


@contextlib.contextmanager
def running_server(engine_dir: Path, max_batch: int = 4, routes: dict | None = None, **options) -> Iterator[Server]:
    """An OpenAI server on a free loopback port; `options` are ServerOptions fields (limits=RequestLimits(...))."""
    pipeline = Pipeline(engine_dir, max_batch=max_batch, threads=1)
    server = Server(pipeline, ServerOptions(model_name="tiny", port=0, routes=routes or {}, **options))
    server.start()
    try:
        yield server
    finally:
        server.close()


def limits(**fields) -> RequestLimits:
    """RequestLimits with some image limits changed (max_bytes=..., max_pixels=..., local_dir=...)."""
    base = RequestLimits()
    image_fields = {k: v for k, v in fields.items() if k in ("max_bytes", "max_pixels", "max_side", "local_dir",
                                                            "allow_remote", "remote_timeout", "remote_networks")}
    rest = {k: v for k, v in fields.items() if k not in image_fields}
    return replace(base, images=replace(base.images, **image_fields), **rest)


def post(url: str, path: str, body: bytes | dict, timeout: float = 60) -> tuple[int, dict]:
    """One POST on a fresh connection: (status, decoded JSON body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


class DecoderGate:
    """Wraps a pipeline's decoder: every decode step waits until the gate is open, and the batch sizes of
    the steps are recorded. Closed, it holds the engine thread between steps so a test can fill the queue
    or let a deadline pass at a moment it chooses."""

    def __init__(self, pipeline: Pipeline, delay: float = 0.0):
        self.decoder = pipeline.decoder
        self.original = self.decoder.decode
        self.delay = delay  # seconds added to every step: a slow engine
        self.opened = threading.Event()
        self.opened.set()
        self.batch_sizes: list[int] = []
        self.decoder.decode = self.decode

    def decode(self, slots, token_ids):
        self.opened.wait()
        if self.delay:
            time.sleep(self.delay)
        self.batch_sizes.append(len(slots))
        return self.original(slots, token_ids)

    def close(self) -> None:
        self.opened.clear()

    def open(self) -> None:
        self.opened.set()
