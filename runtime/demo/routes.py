"""The demo page's routes on the OpenAI server: the page and its files, and the tile layout of an image.
The chat itself goes through POST /v1/chat/completions (streamed), as any client's would."""

from __future__ import annotations

import json
from importlib import resources

from ..server.api_error import ApiError
from ..server.image_urls import fetch_image
from .tiling import tile_layout

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/demo/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/demo/style.css": ("style.css", "text/css; charset=utf-8"),
    "/demo/example.png": ("example.png", "image/png"),
    "/demo/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),  # what a browser asks for on any page of the server
}


def static_file(name: str, content_type: str):
    def serve(handler) -> None:
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        handler.send_bytes(200, body, content_type, {"Cache-Control": "no-cache"})
    return serve


def tiles(handler) -> None:
    """POST {"image": "data:image/...;base64,..."} -> the layout tiling.tile_layout gives for this engine."""
    try:
        data = json.loads(handler.read_body())
        url = data["image"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ApiError(400, 'send {"image": "data:image/png;base64,..."}', "image", "invalid_value") from None
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ApiError(400, "the image must be a data: URL", "image", "invalid_image_url")
    app = handler.app
    image = fetch_image(url, app.options.limits.images, "image")  # decoded to RGB, within the server's limits
    handler.send_json(200, tile_layout(image, app.pipeline.spec))


def demo_routes() -> dict:
    routes = {("GET", path): static_file(name, kind) for path, (name, kind) in STATIC.items()}
    routes[("POST", "/demo/tiles")] = tiles
    return routes
