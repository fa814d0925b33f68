"""The OpenAI-compatible HTTP server, on the standard library's threading HTTP server.

    POST /v1/chat/completions   chat with images (JSON, or server-sent events with "stream": true)
    POST /v1/completions        text continued as written, no chat template (the same, in the text_completion shape)
    GET  /v1/models             the one model this server serves (also /v1/models/{id})
    GET  /health                200 while the engine thread runs, 503 once it has stopped
    GET  /metrics               Prometheus metrics

Each connection gets a thread (HTTP/1.1 keep-alive); handler threads check a request (access:
runtime/server/access.py; framing; the body; the prompt's size), take its place in the queue, fetch and
decode its images (runtime/server/admission.py), and hand it to the one engine thread
(runtime/server/scheduler.py), then wait for its events. Every refusal is an OpenAI-style error body with a
4xx status (429 when the queue is full) and the server goes on serving. Other routes (the demo page) are
added through `routes`.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

from ..errors import AerieError
from ..pipeline import Answer, Pipeline
from .access import Access
from .admission import DecodedPixels, check_prompt_size
from .api_error import ApiError, from_aerie_error
from .api_request import ApiRequest, ImageRef, RequestLimits, parse_request
from .image_urls import EncodedImage, fetch_encoded
from .metrics import CONTENT_TYPE, ServerMetrics
from .scheduler import Job, Scheduler

log = logging.getLogger("aerie.server")

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
API = (CHAT, COMPLETIONS, "/v1/models", "/health", "/metrics")
# After refusing a request whose body it will not read, the server reads and drops this much more (at most,
# for at most LINGER_SECONDS), so that the client, still sending, receives the answer instead of a reset.
DRAIN_BYTES = 64 * 1024**2
LINGER_SECONDS = 2.0
DECIMAL = re.compile(r"[0-9]{1,19}")
Route = Callable[["Handler"], None]


@dataclass(frozen=True)
class ServerOptions:
    model_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    limits: RequestLimits = RequestLimits()
    max_queue: int = 32
    max_prompt_tokens: int | None = None  # default: the decoder's context
    request_timeout: float = 120.0  # seconds from arrival to the last token
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)  # (method, path) -> handler
    api_key: str | None = None  # required as `Authorization: Bearer KEY` (runtime/server/access.py)
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides addresses and localhost ("*": any)
    cors_origins: tuple[str, ...] = ()  # web pages (origins) allowed to call the API ("*": any)

    @property
    def max_body_bytes(self) -> int:
        """Room for every image as base64 (4/3 of its bytes) plus the text."""
        return self.limits.max_images * (self.limits.images.max_bytes * 4 // 3 + 1024) + (1 << 20)

    @property
    def decoded_pixels(self) -> int:
        """Pixels of decoded images held at once, server-wide: one request's worth at the limits."""
        return self.limits.max_images * self.limits.images.max_pixels


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = socket.SOMAXCONN  # the listen backlog: a burst of connections waits, not reset (default 5)


class Server:
    """`Server(pipeline, options).start()` serves on a background thread; `.close()` stops everything."""

    def __init__(self, pipeline: Pipeline, options: ServerOptions):
        self.pipeline = pipeline
        self.options = options
        self.scheduler = Scheduler(pipeline, options.max_queue, options.max_prompt_tokens)
        self.metrics = ServerMetrics(self.scheduler.depth, self.scheduler.running, pipeline.cache)
        self.access = Access(options.host, options.api_key, options.allowed_hosts, options.cors_origins)
        self.pixels = DecodedPixels(options.decoded_pixels)
        self.created = int(time.time())
        self.httpd = HTTPServer((options.host, options.port), Handler)
        self.httpd.app = self  # type: ignore[attr-defined]
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.port}"

    def start(self) -> "Server":
        self.scheduler.start()
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="aerie-http", daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.scheduler.start()
        self.httpd.serve_forever()

    def close(self) -> None:
        if self.thread is not None:  # serve_forever on another thread: ask it to end and wait
            self.httpd.shutdown()
            self.thread.join(10)
        self.scheduler.stop()
        self.httpd.server_close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- chat completions ----------------------------------------------------------------------------

    def model_card(self) -> dict:
        return {"id": self.options.model_name, "object": "model", "created": self.created, "owned_by": "aerie",
                "family": self.pipeline.manifest.family, "max_model_len": self.pipeline.decoder.max_length}

    def submit(self, request: ApiRequest, arrived: float, gone: Callable[[], bool]) -> tuple[Job, Iterator]:
        """Queue the request (429 when the queue is full; with images, only its place until
        `scheduler.ready`); returns the job and the iterator of its events (`events`)."""
        inbox: queue.Queue = queue.Queue()
        job = Job(request.prompt, [], request.params, lambda kind, value: inbox.put((kind, value)),
                  deadline=arrived + self.options.request_timeout, ready=not request.images)
        try:
            self.scheduler.submit(job)
        except AerieError as e:
            raise from_aerie_error(e, request.prompt_param) from None
        return job, self.events(job, inbox, gone)

    def fetch_images(self, refs: list[ImageRef]) -> list[EncodedImage]:
        """Each image's bytes and header size, within the limits; nothing is decoded yet."""
        return [fetch_encoded(ref.url, self.options.limits.images, ref.param) for ref in refs]

    def events(self, job: Job, inbox: queue.Queue, gone: Callable[[], bool]) -> Iterator[tuple[str, object]]:
        """The job's events as they come. Twice a second it looks whether the client is gone (then cancels the
        job: ConnectionAbortedError); the scheduler ends every job by its deadline, the grace covers a dead loop."""
        end, checked = job.deadline + 30, time.monotonic()
        while True:
            try:
                event = inbox.get(timeout=0.5)
            except queue.Empty:
                event = None
            now = time.monotonic()
            if now - checked >= 0.5:
                checked = now
                if gone():
                    self.scheduler.cancel(job)
                    raise ConnectionAbortedError("the client left")
            if event is not None:
                yield event
            elif now >= end:
                self.scheduler.cancel(job)
                yield "error", AerieError("the engine did not answer in time; see the server log")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "aerie"
    timeout = 300  # seconds a connection may sit idle (or stall mid-request) before its thread lets it go

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes (a stream in many): without this, Nagle's algorithm holds the
        # second until the client's delayed ACK, 40 ms later, on every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def app(self) -> Server:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.address_string(), format % args)

    # --- responses -----------------------------------------------------------------------------------

    def send_bytes(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.app.metrics.requests.inc(endpoint=self.endpoint, status=str(status))

    def send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self.send_bytes(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json", headers)

    def end_headers(self) -> None:
        """Headers every response carries: no MIME sniffing, and CORS when --cors-origin allows the page."""
        self.send_header("X-Content-Type-Options", "nosniff")
        headers = getattr(self, "headers", None)
        if headers is not None:
            for name, value in self.app.access.cors_headers(headers.get("Origin")).items():
                self.send_header(name, value)
        super().end_headers()

    def send_error_body(self, error: ApiError) -> None:
        headers = {"Retry-After": "1"} if error.status == 429 else None
        if error.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        self.send_json(error.status, error.body(), headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, headers too long) as JSON errors too."""
        self.request_version = "HTTP/1.1"  # not HTTP/0.9, which has no status line: garbage is not a 0.9 client
        self.close_connection = True
        self.send_error_body(ApiError(code, f"{message or 'bad request'}{': ' + explain if explain else ''}",
                                      code="bad_http_request"))

    @property
    def endpoint(self) -> str:
        path = self.path.split("?", 1)[0]
        known = set(API) | {p for _, p in self.app.options.routes}
        return path if path in known else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")

    # --- requests ------------------------------------------------------------------------------------

    def body_length(self) -> int:
        """The declared body length: one plain decimal Content-Length (or none: 0). Anything else is refused at
        once, before a byte of the body is read: a length that is not a number (-1, 1_0, 0x10), two that
        differ, a Transfer-Encoding (chunked bodies are not taken; with a length, it smuggles requests)."""
        lengths = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if self.headers.get("Transfer-Encoding") is not None:
            raise ApiError(411, "chunked request bodies are not supported; send a Content-Length")
        if not lengths:
            return 0
        value = lengths.pop()
        if lengths or not DECIMAL.fullmatch(value):
            raise ApiError(400, "the Content-Length header must be one non-negative decimal number",
                           code="bad_http_request")
        return int(value)

    def read_body(self) -> bytes:
        """The body, once its length is known to be within the limit (413 before a byte of it is read)."""
        length = self.declared
        if not self.headers.get_all("Content-Length"):
            raise ApiError(411, "the request needs a Content-Length header")
        if length > self.app.options.max_body_bytes:
            raise ApiError(413, f"the request body is {length:,} bytes, over the server's limit of "
                                f"{self.app.options.max_body_bytes:,}; send fewer or smaller images",
                           code="request_too_large")
        self.body_read = True
        return self.rfile.read(length)

    def linger(self) -> None:
        """Close after an answer while the client may still be sending the body: stop writing, read and drop
        what comes (bounded in bytes and time) so the client can read the answer, then let the socket go."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            end, left = time.monotonic() + LINGER_SECONDS, DRAIN_BYTES
            while left > 0 and time.monotonic() < end:
                chunk = self.connection.recv(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def client_gone(self) -> bool:
        """Whether the client closed its end (readable with nothing to read; a pipelined request is data)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        self.body_read = False
        self.declared: int | None = None  # the body's length; None while (or when) its framing is unknown
        try:
            self.declared = self.body_length()
            self.app.access.check(method, path, self.headers)
            route = self.app.options.routes.get((method, path))
            if route is not None:
                route(self)
            elif method == "OPTIONS":
                if not self.app.access.cors_headers(self.headers.get("Origin")):
                    raise ApiError(405, "OPTIONS (a CORS preflight) is answered only with --cors-origin")
                self.send_bytes(204, b"", "text/plain")
            elif method == "POST" and path in (CHAT, COMPLETIONS):
                self.completions(chat=path == CHAT)
            elif method == "GET" and path in ("/health", "/v1/health"):
                alive = self.app.scheduler.alive
                self.send_json(200 if alive else 503, {"status": "ok" if alive else "engine stopped"})
            elif method == "GET" and path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [self.app.model_card()]})
            elif method == "GET" and path.startswith("/v1/models/"):
                name = path[len("/v1/models/"):]
                if name != self.app.options.model_name:
                    raise ApiError(404, f"the model {name!r} does not exist", "model", "model_not_found")
                self.send_json(200, self.app.model_card())
            elif method == "GET" and path == "/metrics":
                self.send_bytes(200, self.app.metrics.render().encode(), CONTENT_TYPE)
            elif path in API or path in {p for _, p in self.app.options.routes}:
                raise ApiError(405, f"{method} is not allowed on {path}")
            else:
                raise ApiError(404, f"no such endpoint: {method} {path}", code="not_found")
        except (ApiError, AerieError) as e:  # an AerieError: e.g. no room to decode the images before the deadline
            if not self.body_read and self.declared != 0:
                self.close_connection = True  # an unread body would be taken for the next request
            self.send_error_body(e if isinstance(e, ApiError) else from_aerie_error(e))
        except ConnectionError:  # the client left (BrokenPipe, ConnectionReset, ConnectionAborted)
            self.close_connection = True
        except Exception as e:  # a bug must cost one request, not the server
            log.exception("unhandled error on %s %s", method, path)
            self.close_connection = True
            self.send_error_body(ApiError(500, f"internal server error ({type(e).__name__}: {e})", code="internal"))
        finally:
            if self.close_connection and not self.body_read and self.declared != 0:
                self.linger()

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    def do_OPTIONS(self) -> None:
        self.dispatch("OPTIONS")

    # --- completions ---------------------------------------------------------------------------------

    def completions(self, chat: bool) -> None:
        """Chat completions and completions: one path, the answer shaped per endpoint (`chat`)."""
        app, arrived = self.app, time.monotonic()
        request = parse_request(self.read_body(), app.options.limits, app.options.model_name, chat)
        try:
            check_prompt_size(app.pipeline, request.prompt, len(request.images), app.scheduler.max_prompt_tokens)
        except AerieError as e:
            raise from_aerie_error(e, request.prompt_param) from None
        job, events = app.submit(request, arrived, self.client_gone)
        try:
            if request.images:
                encoded = app.fetch_images(request.images)
                with app.pixels.decoded(encoded, app.options.limits.images, job.deadline, self.client_gone) as images:
                    app.scheduler.ready(job, images)
                    kind, value = next(events)  # "started": the images are rows now, or "error"
            else:
                kind, value = next(events)
        except BaseException:
            app.scheduler.cancel(job)
            raise
        if kind == "error":
            raise from_aerie_error(value, request.prompt_param)
        app.metrics.queue_time.observe(time.monotonic() - arrived)
        completion_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if request.stream:
            self.stream_completion(request, job, events, completion_id, arrived)
        else:
            self.whole_completion(request, events, completion_id, arrived)

    def whole_completion(self, request: ApiRequest, events: Iterator, completion_id: str, arrived: float) -> None:
        app = self.app
        first_text = None
        for kind, value in events:
            if kind == "text" and first_text is None:
                first_text = time.monotonic()
            elif kind == "error":
                raise from_aerie_error(value, request.prompt_param)
            elif kind == "done":
                break
        answer: Answer = value
        self.record(answer, arrived, first_text)
        text = {"message": {"role": "assistant", "content": answer.text}} if request.chat else \
            {"text": request.echo + answer.text}
        self.send_json(200, {
            "id": completion_id, "object": "chat.completion" if request.chat else "text_completion",
            "created": int(time.time()), "model": app.options.model_name,
            "choices": [{"index": 0, **text, "logprobs": None, "finish_reason": answer.finish_reason}],
            "usage": usage(answer), "timings": answer.timings(),
        })

    def stream_completion(self, request: ApiRequest, job: Job, events: Iterator, completion_id: str,
                          arrived: float) -> None:
        """Server-sent events: chat.completion.chunk deltas (the role first), or text_completion chunks of text
        (the echoed prompt first); the finish reason in a last empty piece, then the usage chunk if asked."""
        app = self.app
        created = int(time.time())

        def chunk(text: str | None, finish_reason: str | None = None, first: bool = False, **extra) -> dict:
            if text is None:  # the usage chunk
                choices = []
            elif request.chat:
                delta = {"role": "assistant", "content": text} if first else {"content": text} if text else {}
                choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
            else:
                choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]
            return {"id": completion_id, "object": "chat.completion.chunk" if request.chat else "text_completion",
                    "created": created, "model": app.options.model_name, "choices": choices, **extra}

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        first_text = None
        try:
            if request.chat or request.echo:
                self.send_event(chunk(request.echo, first=True))
            for kind, value in events:
                if kind == "text":
                    first_text = first_text or time.monotonic()
                    self.send_event(chunk(value))
                elif kind == "error":
                    # The status line is gone already: OpenAI's way is an error event in the stream.
                    error = from_aerie_error(value, request.prompt_param)
                    self.send_event(error.body())
                    status = str(error.status)
                    break
                else:
                    answer: Answer = value
                    self.send_event(chunk("", answer.finish_reason))
                    if request.include_usage:
                        self.send_event(chunk(None, usage=usage(answer), timings=answer.timings()))
                    self.record(answer, arrived, first_text)
                    status = "200"
                    break
            self.send_event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except ConnectionError:  # the client left: free its slot
            app.scheduler.cancel(job)
            self.close_connection = True
            status = "client_closed"
        app.metrics.requests.inc(endpoint=self.endpoint, status=status)

    def send_event(self, payload: dict | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        event = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        self.wfile.flush()

    def record(self, answer: Answer, arrived: float, first_text: float | None) -> None:
        metrics, now = self.app.metrics, time.monotonic()
        metrics.prompt_tokens.inc(answer.prompt_tokens)
        metrics.generation_tokens.inc(len(answer.token_ids))
        metrics.latency.observe(now - arrived)
        metrics.first_token.observe((first_text or now) - arrived)


def usage(answer: Answer) -> dict:
    n = len(answer.token_ids)
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": n, "total_tokens": answer.prompt_tokens + n}
