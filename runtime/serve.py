"""`python -m runtime serve ENGINE_DIR --host 127.0.0.1 --port 8000`: an OpenAI-compatible server.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="NAME", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
        {"type": "text", "text": "What colour is the shape?"}]}])

Endpoints, limits and metrics: docs/serving.md. Ctrl-C (or SIGTERM) stops it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from .arguments import Parser, add_device_arguments, command, positive_int
from .server.access import API_KEY_ENV, is_loopback
from .server.http import Route, Server, ServerOptions

MiB = 1024**2


def add_arguments(p: argparse.ArgumentParser, default_port: int = 8000) -> None:
    """The options `serve` and `demo` share."""
    p.add_argument("engine_dir", type=Path, help="engine directory written by build.py")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=default_port, help=f"port (default: {default_port}; 0 picks a free one)")
    p.add_argument("--model-name", help="the model id clients send (default: the engine directory's name)")
    p.add_argument("--log-requests", action="store_true", help="log every HTTP request to stderr")
    g = p.add_argument_group("limits")
    g.add_argument("--max-queue", type=int, default=32, help="requests waiting for a slot before 429 (default: 32)")
    g.add_argument("--max-new-tokens", type=int, default=512, metavar="N",
                   help="most new tokens per request, and what a request that does not say gets (default: 512)")
    g.add_argument("--max-tokens", type=int, dest="max_new_tokens", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the earlier spelling
    g.add_argument("--max-prompt-tokens", type=int,
                   help="most prompt tokens, image tokens included (default: the context)")
    g.add_argument("--max-images", type=int, default=4, help="images per request (default: 4)")
    g.add_argument("--max-image-bytes", type=int, default=16 * MiB, help="bytes per image file (default: 16 MiB)")
    g.add_argument("--max-image-pixels", type=int, default=16_000_000, help="pixels per image (default: 16 M)")
    g.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request, queueing included (default: 120)")
    g = p.add_argument_group("image sources (data: URLs are always accepted)")
    g.add_argument("--allow-local-images", type=Path, metavar="DIR", help="accept file paths under DIR (default: refused)")
    g.add_argument("--allow-remote-images", action="store_true", help="accept http(s) URLs (downloaded by the server)")
    g.add_argument("--remote-timeout", type=float, default=10.0, help="seconds per download (default: 10)")
    g.add_argument("--allow-image-network", action="append", default=[], metavar="CIDR",
                   help="with --allow-remote-images, also fetch from this private network (e.g. 10.0.0.0/8; "
                        "repeatable); public addresses only otherwise")
    g = p.add_argument_group("access (docs/serving.md, Security)")
    g.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require `Authorization: Bearer KEY` (default: ${API_KEY_ENV}; none: anyone who can reach "
                        "the port may use the server)")
    g.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host name to answer to besides addresses and localhost (a proxy's public name; "
                        "repeatable; * for any)")
    g.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web page origin allowed to call the API from a browser (https://app.example.com; "
                        "repeatable; * for any); none by default")
    g = p.add_argument_group("engine")
    add_device_arguments(g)
    g.add_argument("--max-batch", type=int, default=4, help="requests decoded together (decoder slots, default: 4)")
    g.add_argument("--max-length", type=positive_int, metavar="TOKENS",
                   help="cap the context below the engine's, to save memory (default: the engine's whole context)")
    g.add_argument("--image-cache-mb", type=float, default=256, help="image embeddings kept for repeated images, in MB (default: 256)")
    g.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the engine files")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("max_queue", "max_new_tokens", "max_images", "max_image_bytes", "max_image_pixels", "max_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.image_cache_mb < 0:
        p.error("--image-cache-mb must be >= 0 (0 turns the cache off)")
    if args.request_timeout <= 0 or args.remote_timeout <= 0:
        p.error("timeouts must be positive")
    if args.allow_local_images is not None and not args.allow_local_images.is_dir():
        p.error(f"--allow-local-images {args.allow_local_images}: not a directory")
    try:
        args.allow_image_network = tuple(ipaddress.ip_network(n, strict=False) for n in args.allow_image_network)
    except ValueError as e:
        p.error(f"--allow-image-network: {e}")


def open_server(args: argparse.Namespace, routes: dict[tuple[str, str], Route] | None = None) -> Server:
    """Load the engine and bind the port (nothing is served until `serve_forever` or `start`)."""
    from .pipeline import Pipeline
    from .server.api_request import RequestLimits
    from .server.image_urls import ImageLimits

    pipeline = Pipeline(args.engine_dir, device=args.device, threads=args.threads, max_batch=args.max_batch,
                        max_length=args.max_length, cache_bytes=int(args.image_cache_mb * MiB),
                        verify_checksums=not args.no_verify)
    images = ImageLimits(args.max_image_bytes, args.max_image_pixels, local_dir=args.allow_local_images,
                         allow_remote=args.allow_remote_images, remote_timeout=args.remote_timeout,
                         remote_networks=args.allow_image_network)
    options = ServerOptions(
        model_name=args.model_name or args.engine_dir.resolve().name, host=args.host, port=args.port,
        limits=RequestLimits(args.max_new_tokens, args.max_images, images), max_queue=args.max_queue,
        max_prompt_tokens=args.max_prompt_tokens, request_timeout=args.request_timeout, routes=routes or {},
        api_key=args.api_key or None, allowed_hosts=tuple(args.allow_host), cors_origins=tuple(args.cors_origin),
    )
    if not is_loopback(args.host) and not options.api_key:
        print(f"warning: listening on {args.host} without an API key: anyone who can reach this port can use the "
              f"model; set {API_KEY_ENV} (or --api-key), or serve on 127.0.0.1 behind a proxy",
              file=sys.stderr, flush=True)
    return Server(pipeline, options)


def run_until_stopped(server: Server, what: str) -> int:
    """Serve on this thread until Ctrl-C or SIGTERM, then shut down cleanly."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"{what} (model {server.options.model_name!r}, {server.pipeline.manifest.family}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    print("stopped", file=sys.stderr, flush=True)
    return 0


def main(argv: Sequence[str]) -> int:
    p = Parser(
        prog=command("serve"),
        description="Serve an Aerie engine directory with an OpenAI-compatible API "
                    "(POST /v1/chat/completions, GET /v1/models, /health, /metrics).")
    add_arguments(p)
    args = p.parse_args(argv)
    check_arguments(p, args)
    logging.basicConfig(level=logging.INFO if args.log_requests else logging.WARNING, format="%(asctime)s %(message)s")
    server = open_server(args)
    return run_until_stopped(server, f"serving the OpenAI API on {server.url}/v1")
