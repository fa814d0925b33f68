"""The demo page's routes on the OpenAI server: the page and its files, and the tile layout of an image.
The chat itself goes through POST /v1/chat/completions (streamed), as any client's would."""

from __future__ import annotations

import time
from importlib import resources

from ..server.api_error import ApiError
from ..server.api_request import parse_body
from ..server.image_urls import fetch_encoded
from .tiling import tile_layout

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/demo/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/demo/style.css": ("style.css", "text/css; charset=utf-8"),
    "/demo/example.png": ("example.png", "image/png"),
    "/demo/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),  # what a browser asks for on any page of the server
}


# The page runs only its own script and style, talks only to this server, and may not be framed (clickjacking).
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def static_file(name: str, content_type: str):
    def serve(handler) -> None:
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        handler.send_bytes(200, body, content_type, PAGE_HEADERS)
    return serve


def tiles(handler) -> None:
    """POST {"image": "data:image/...;base64,..."} -> the layout tiling.tile_layout gives for this engine."""
    data = parse_body(handler.read_body())
    url = data.get("image")
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ApiError(400, 'send {"image": "data:image/png;base64,..."}', "image", "invalid_image_url")
    app = handler.app
    limits = app.options.limits.images
    encoded = [fetch_encoded(url, limits, "image")]  # within the server's limits, decoded like a chat's images
    deadline = time.monotonic() + app.options.request_timeout
    with app.pixels.decoded(encoded, limits, deadline, handler.client_gone) as (image,):
        handler.send_json(200, tile_layout(image, app.pipeline.spec))


def demo_routes() -> dict:
    routes = {("GET", path): static_file(name, kind) for path, (name, kind) in STATIC.items()}
    routes[("POST", "/demo/tiles")] = tiles
    return routes
