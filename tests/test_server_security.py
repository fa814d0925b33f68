"""The server against hostile clients, on raw sockets: body framing refused before the body is read, the API
key, the Host and Origin checks (DNS rebinding, cross-site POSTs), CORS only when asked for, security
headers, a burst of connections, a client that leaves a plain request, huge prompts refused without the
engine thread, images admitted before they are decoded. After each, a good request is still answered."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from PIL import Image

from runtime.demo.routes import demo_routes
from serving_helpers import DecoderGate, data_url, limits, png_bytes, post, running_server, shapes_image
from test_image_io import png_bytes as raw_png
from tiny_engines import built_engine

GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "What colour is the shape?"}], "max_tokens": 4,
        "temperature": 0}
KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return built_engine("eve", tmp_path_factory)[1]


@pytest.fixture(scope="module")
def server(engine_dir):
    with running_server(engine_dir, routes=demo_routes(), max_batch=1) as server:
        yield server


def exchange(port: int, raw: bytes, timeout: float = 5.0, then: bytes = b"") -> bytes:
    """Send `raw`, then keep sending `then` in the background while reading the whole answer (until close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        if then:
            threading.Thread(target=lambda: _send_quietly(sock, then), daemon=True).start()
        reply = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            reply += chunk
        return reply


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


def request(server, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None
            ) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


def assert_serving(server, headers: dict | None = None) -> None:
    status, _, body = request(server, "POST", "/v1/chat/completions", GOOD, headers)
    assert status == 200, body


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


# --- body framing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [["-1"], ["1_0"], ["+5"], ["0x10"], ["5", "6"], ["1e3"], ["99999999999999999999"]])
def test_bad_content_length_is_refused_before_the_body(server, lengths):
    """`Content-Length: -1` then 300 MB made the old server read it all (int() takes -1, 1_0, +5)."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += b"".join(f"Content-Length: {n}\r\n".encode() for n in lengths) + b"\r\n"
    start = time.monotonic()
    reply = exchange(server.port, head, then=b"x" * (8 << 20))
    status, headers, body = first_response(reply)
    assert status == 400 and headers.get("connection") == "close", reply[:300]
    assert error_code(body) == "bad_http_request"
    assert time.monotonic() - start < 4
    assert_serving(server)


def first_response(reply: bytes) -> tuple[int, dict, bytes]:
    """The first HTTP response in `reply`: status, headers (lowercase names), body."""
    head, _, rest = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    return int(lines[0].split()[1]), headers, rest[:int(headers.get("content-length", 0))]


def test_length_with_transfer_encoding_is_refused(server):
    reply = exchange(server.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411 "), reply[:200]
    assert_serving(server)


def test_body_over_the_limit_is_answered_before_it_is_sent(engine_dir):
    """The 413 comes from the header alone: a client that has not sent its body gets it at once (the old server
    read bodies up to 64 MB before answering)."""
    with running_server(engine_dir, limits=limits(max_bytes=100_000)) as server:
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                f"{server.options.max_body_bytes + 1}\r\n\r\n").encode()
        start = time.monotonic()
        status, headers, body = first_response(exchange(server.port, head))  # and no body at all
        assert status == 413 and error_code(body) == "request_too_large" and headers["connection"] == "close"
        assert time.monotonic() - start < 4
        assert_serving(server)


# --- huge prompts -----------------------------------------------------------------------------------------


def test_huge_prompts_are_refused_without_the_engine_thread(server):
    """With the engine thread held mid-generation, a 20 MB prompt (past the characters any context holds) and a
    prompt of a few context's worth of tokens are both refused at once: neither waits for the engine, which
    tokenizes only prompts whose text fits."""
    gate = DecoderGate(server.pipeline)
    gate.close()
    try:
        running = threading.Thread(target=post, args=(server.url, "/v1/chat/completions", GOOD))
        running.start()
        end = time.monotonic() + 30
        while server.scheduler.running() == 0:
            assert time.monotonic() < end
            time.sleep(0.02)
        context = server.pipeline.decoder.max_length
        for text in ("red green blue " * 1_400_000, "red " * (3 * context)):
            start = time.monotonic()
            status, body = post(server.url, "/v1/chat/completions",
                                {**GOOD, "messages": [{"role": "user", "content": text}]})
            assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
            assert time.monotonic() - start < 5, "the refusal waited"
    finally:
        gate.open()
    running.join(60)
    assert_serving(server)


# --- images admitted before decoding ------------------------------------------------------------------------


def header_only_png(width: int, height: int) -> str:
    """A PNG whose header is valid and whose pixels are missing: decoding it fails, reading its size does not."""
    return data_url(raw_png(width, height, 8, 2, None))


def image_request(*urls: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {**GOOD, "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "What is it?"}]}]}


def test_full_queue_refuses_before_decoding(engine_dir):
    """The queue is checked before any image is decoded: a full queue answers 429, not the image's 400."""
    with running_server(engine_dir, max_batch=1, max_queue=1) as server:
        gate = DecoderGate(server.pipeline)
        gate.close()
        try:
            first = threading.Thread(target=post, args=(server.url, "/v1/chat/completions", GOOD))
            first.start()
            while server.scheduler.running() == 0:
                time.sleep(0.02)
            second = threading.Thread(target=post, args=(server.url, "/v1/chat/completions", GOOD))
            second.start()
            while server.scheduler.depth() == 0:
                time.sleep(0.02)
            status, body = post(server.url, "/v1/chat/completions", image_request(header_only_png(64, 64)))
            assert status == 429 and body["error"]["code"] == "queue_full", body
        finally:
            gate.open()
        first.join(60)
        second.join(60)
        status, body = post(server.url, "/v1/chat/completions", image_request(header_only_png(64, 64)))
        assert status == 400 and body["error"]["code"] == "invalid_image", body


def test_decoded_pixels_are_bounded_server_wide(engine_dir):
    """Decoded images wait in the queue until the engine consumes them, so their pixels are bounded: with one
    request's worth held by a queued request, the next request's images are not decoded (its broken image gets
    no answer) until the engine has taken the first one's."""
    image_limits = limits(max_images=2, max_pixels=100_000)
    with running_server(engine_dir, max_batch=1, limits=image_limits) as server:
        gate = DecoderGate(server.pipeline)
        gate.close()
        results: dict[str, tuple] = {}

        def ask(name: str, body: dict) -> None:
            results[name] = post(server.url, "/v1/chat/completions", body)

        full = data_url(shapes_image((300, 300)))  # 90,000 pixels: two are nearly the whole budget
        threads = [threading.Thread(target=ask, args=("running", GOOD))]
        threads[0].start()
        while server.scheduler.running() == 0:
            time.sleep(0.02)
        threads.append(threading.Thread(target=ask, args=("queued", image_request(full, full))))
        threads[1].start()
        while server.pixels.used == 0:
            time.sleep(0.02)
        threads.append(threading.Thread(target=ask, args=("waiting", image_request(header_only_png(200, 200)))))
        threads[2].start()
        time.sleep(1.5)
        assert "waiting" not in results, "its image was decoded while the budget was held"
        assert server.pixels.used == 180_000
        gate.open()
        for t in threads:
            t.join(60)
        assert results["running"][0] == 200 and results["queued"][0] == 200, results
        assert results["waiting"][0] == 400 and results["waiting"][1]["error"]["code"] == "invalid_image"
        assert server.pixels.used == 0


def test_long_strip_is_refused_from_its_header(server):
    """1 x 16,000,000 is within the pixel limit, but decoding and resizing it took seconds per image."""
    status, body = post(server.url, "/v1/chat/completions", image_request(header_only_png(1, 16_000_000)))
    assert status == 400 and body["error"]["code"] == "invalid_image", body
    assert "side over the limit of 16,384" in body["error"]["message"]


# --- access ------------------------------------------------------------------------------------------------


def test_api_key(engine_dir):
    with running_server(engine_dir, routes=demo_routes(), api_key=KEY) as server:
        for method, path, body in (("POST", "/v1/chat/completions", GOOD), ("GET", "/v1/models", None),
                                   ("GET", "/metrics", None), ("POST", "/demo/tiles", {"image": "x"})):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                            {"Authorization": f"Basic {KEY}"}):
                status, response_headers, reply = request(server, method, path, body, headers)
                assert status == 401 and error_code(reply) == "invalid_api_key", (path, headers, reply)
                assert response_headers["WWW-Authenticate"] == "Bearer"
        for path in ("/health", "/", "/demo/app.js"):  # a load balancer's probe and the page's files stay open
            assert request(server, "GET", path)[0] == 200, path
        assert request(server, "GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})[0] == 200
        assert_serving(server, {"Authorization": f"Bearer {KEY}"})


def test_openai_client_with_the_key(engine_dir):
    from openai import AuthenticationError, OpenAI

    with running_server(engine_dir, api_key=KEY) as server:
        good = OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        reply = good.chat.completions.create(model="tiny", messages=GOOD["messages"], max_tokens=4, temperature=0)
        assert reply.choices[0].message.content is not None
        bad = OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(AuthenticationError):
            bad.chat.completions.create(model="tiny", messages=GOOD["messages"], max_tokens=4)


def test_host_must_be_this_server(engine_dir):
    """DNS rebinding: a page on rebind.example, its name pointed at 127.0.0.1, sends `Host: rebind.example`."""
    with running_server(engine_dir, allowed_hosts=("api.example.com",)) as server:
        for host in ("rebind.example", f"rebind.example:{server.port}", "127.0.0.1.nip.io"):
            status, _, reply = request(server, "POST", "/v1/chat/completions", GOOD, {"Host": host})
            assert status == 403 and error_code(reply) == "host_not_allowed", (host, reply)
        for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "api.example.com", f"[::1]:{server.port}"):
            assert request(server, "POST", "/v1/chat/completions", GOOD, {"Host": host})[0] == 200, host


def test_cross_site_post_is_refused(server):
    """A form on another site can POST `text/plain` without a CORS preflight: the old server ran it (200)."""
    page = "https://attacker.example"
    status, headers, reply = request(server, "POST", "/v1/chat/completions", json.dumps(GOOD).encode(),
                                     {"Origin": page, "Content-Type": "text/plain"})
    assert status == 403 and error_code(reply) == "origin_not_allowed", reply
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = request(server, "OPTIONS", "/v1/chat/completions", None,
                                 {"Origin": page, "Access-Control-Request-Method": "POST"})
    assert status in (403, 405) and "Access-Control-Allow-Origin" not in headers
    own = f"http://127.0.0.1:{server.port}"  # the demo page's own requests
    assert request(server, "POST", "/v1/chat/completions", GOOD, {"Origin": own})[0] == 200


def test_cors_only_for_the_origins_given(engine_dir):
    page = "https://app.example.com"
    with running_server(engine_dir, cors_origins=(page,)) as server:
        status, headers, _ = request(server, "OPTIONS", "/v1/chat/completions", None,
                                     {"Origin": page, "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": "authorization, content-type"})
        assert status == 204 and headers["Access-Control-Allow-Origin"] == page, headers
        assert "Authorization" in headers["Access-Control-Allow-Headers"]
        status, headers, _ = request(server, "POST", "/v1/chat/completions", GOOD, {"Origin": page})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == page
        status, headers, _ = request(server, "POST", "/v1/chat/completions", GOOD, {"Origin": "https://other.example"})
        assert status == 403 and "Access-Control-Allow-Origin" not in headers


def test_security_headers(server):
    status, headers, _ = request(server, "GET", "/")
    assert status == 200
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/v1/models", "/nothing"):
        assert request(server, "GET", path)[1]["X-Content-Type-Options"] == "nosniff"


# --- connections ---------------------------------------------------------------------------------------------


def test_burst_of_connections_waits_in_the_backlog(server):
    """200 connections opened while the accept loop is stopped all get through the handshake and are then
    served (a listen backlog of 5 made the kernel drop or reset them)."""
    server.httpd.shutdown()  # stop accepting; the listening socket stays open
    server.thread.join(10)
    socks = []
    try:
        for _ in range(200):
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    finally:
        server.thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
        server.thread.start()
    for sock in socks:
        sock.settimeout(30)
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        sock.close()
    assert_serving(server)


def test_plain_request_whose_client_leaves_is_cancelled(engine_dir):
    """As for a stream: a client that disconnects from a non-streaming request frees its slot."""
    with running_server(engine_dir, max_batch=1) as server:
        gate = DecoderGate(server.pipeline, delay=0.02)
        body = json.dumps({**GOOD, "max_tokens": 500}).encode()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        while not gate.batch_sizes:
            time.sleep(0.02)
        sock.close()
        steps_then = len(gate.batch_sizes)
        end = time.monotonic() + 10
        while server.scheduler.running():
            assert time.monotonic() < end, "the request ran on after its client left"
            time.sleep(0.05)
        assert len(gate.batch_sizes) - steps_then < 100
        gate.delay = 0.0
        assert_serving(server)


def test_demo_tiles_refuses_like_the_chat(server):
    status, _, reply = request(server, "POST", "/demo/tiles", b"[" * 100_000)
    assert status == 400 and error_code(reply) == "invalid_json", reply  # was a RecursionError: 500
    status, _, reply = request(server, "POST", "/demo/tiles", {"image": header_only_png(1, 16_000_000)})
    assert status == 400 and error_code(reply) == "invalid_image", reply
    status, _, reply = request(server, "POST", "/demo/tiles", {"image": data_url(shapes_image())})
    assert status == 200 and json.loads(reply)["width"] == 96, reply
