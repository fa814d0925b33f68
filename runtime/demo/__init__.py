"""`python -m runtime demo ENGINE_DIR`: a page to chat about an image, in the browser.

Upload an image (or take the example), ask questions, and watch the answer stream; the page draws how the
image was tiled for the vision engine and shows where the time went (preprocess, vision, prefill, decode).
It is the OpenAI server (same options, same endpoints) with the page at / (runtime/demo/static/).
"""

from __future__ import annotations

import logging
from typing import Sequence


def main(argv: Sequence[str]) -> int:
    from ..arguments import Parser, command
    from ..serve import add_arguments, check_arguments, open_server, run_until_stopped
    from .routes import demo_routes

    p = Parser(prog=command("demo"), description="Chat about images with an Aerie engine in the browser.")
    add_arguments(p, default_port=8080)
    args = p.parse_args(argv)
    check_arguments(p, args)
    logging.basicConfig(level=logging.INFO if args.log_requests else logging.WARNING, format="%(asctime)s %(message)s")
    server = open_server(args, demo_routes())
    return run_until_stopped(server, f"demo page at {server.url}/")
