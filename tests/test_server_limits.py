"""The server's limits under load, with the engine held between decode steps by a gate: a full queue answers
429, a request past its time limit 408 (or an error event once streaming), a client that leaves frees its
slot; image sources beyond data: URLs only with their flags, downloads bounded in bytes and time."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import ipaddress
import json
import threading
import time

import pytest

from runtime.server.image_urls import allowed_address

from serving_helpers import DecoderGate, limits, png_bytes, post, running_server, shapes_image, user_message
from test_server_errors import noise_png
from tiny_engines import built_engine

GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "What colour is the shape?"}], "max_tokens": 6,
        "temperature": 0}


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return built_engine("eve", tmp_path_factory)[1]


def wait_for(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting for the server"
        time.sleep(0.02)


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn(*args)))
    thread.start()
    return thread, result


def test_full_queue_is_429_then_everyone_is_served(engine_dir):
    with running_server(engine_dir, max_batch=1, max_queue=1) as server:
        gate = DecoderGate(server.pipeline)
        gate.close()
        first, first_result = in_thread(post, server.url, "/v1/chat/completions", GOOD)
        wait_for(lambda: server.scheduler.running() == 1)
        second, second_result = in_thread(post, server.url, "/v1/chat/completions", GOOD)
        wait_for(lambda: server.scheduler.depth() == 1)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps(GOOD), {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        conn.close()
        assert response.status == 429 and response.headers["Retry-After"] == "1"
        assert body["error"]["code"] == "queue_full" and body["error"]["type"] == "rate_limit_error"
        gate.open()
        first.join(60)
        second.join(60)
        assert first_result["value"][0] == 200 and second_result["value"][0] == 200
        assert first_result["value"][1]["choices"][0]["message"]["content"] == \
            second_result["value"][1]["choices"][0]["message"]["content"]
        assert post(server.url, "/v1/chat/completions", GOOD)[0] == 200


def test_request_past_its_time_limit_is_408(engine_dir):
    with running_server(engine_dir, max_batch=1, request_timeout=1.0) as server:
        gate = DecoderGate(server.pipeline)
        gate.close()
        running, running_result = in_thread(post, server.url, "/v1/chat/completions", GOOD)
        wait_for(lambda: server.scheduler.running() == 1)
        queued, queued_result = in_thread(post, server.url, "/v1/chat/completions", GOOD)
        wait_for(lambda: server.scheduler.depth() == 1)
        time.sleep(1.2)
        gate.open()
        running.join(30)
        queued.join(30)
        for status, body in (running_result["value"], queued_result["value"]):
            assert status == 408, body
            assert body["error"]["code"] == "timeout" and "time limit" in body["error"]["message"]
        assert server.scheduler.running() == 0 and server.scheduler.depth() == 0
        status, body = post(server.url, "/v1/chat/completions", GOOD)
        assert status == 200, body


def test_stream_past_its_time_limit_ends_with_an_error_event(engine_dir):
    with running_server(engine_dir, max_batch=1, request_timeout=1.0) as server:
        gate = DecoderGate(server.pipeline, delay=0.2)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({**GOOD, "max_tokens": 60, "stream": True}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        events = [line[len("data: "):] for line in response.read().decode().splitlines() if line.startswith("data: ")]
        conn.close()
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])
        assert error["error"]["code"] == "timeout", events[-3:]
        assert len(events) > 3, "some text should have streamed before the deadline"
        gate.delay = 0.0
        assert post(server.url, "/v1/chat/completions", GOOD)[0] == 200


def test_client_that_leaves_frees_its_slot(engine_dir):
    with running_server(engine_dir, max_batch=1) as server:
        gate = DecoderGate(server.pipeline, delay=0.01)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({**GOOD, "max_tokens": 500, "stream": True}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        response.fp.readline()  # the first chunk's size line: the stream has begun
        conn.sock.close()
        conn.close()
        steps_then = len(gate.batch_sizes)
        wait_for(lambda: server.scheduler.running() == 0, timeout=10)
        assert len(gate.batch_sizes) - steps_then < 400, "the request ran on after its client left"
        gate.delay = 0.0
        assert post(server.url, "/v1/chat/completions", GOOD)[0] == 200


def test_local_images_only_under_the_allowed_directory(engine_dir, tmp_path):
    image = shapes_image()
    (tmp_path / "shapes.png").write_bytes(png_bytes(image))
    with running_server(engine_dir, limits=limits(local_dir=tmp_path)) as server:
        by_data = post(server.url, "/v1/chat/completions", {**GOOD, "messages": [user_message("What is it?", image)]})
        for url in (str(tmp_path / "shapes.png"), f"file://{tmp_path}/shapes.png", "shapes.png"):
            body = {**GOOD, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]}]}
            status, answer = post(server.url, "/v1/chat/completions", body)
            assert status == 200, answer
            assert answer["choices"][0]["message"]["content"] == by_data[1]["choices"][0]["message"]["content"]
        for url in ("/etc/hostname", "../outside.png", f"{tmp_path}/missing.png"):
            body = {**GOOD, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]}]}
            status, error = post(server.url, "/v1/chat/completions", body)
            assert status == 400, (url, error)
            assert error["error"]["code"] in ("invalid_image_url", "invalid_image")


class ImageHost(http.server.BaseHTTPRequestHandler):
    """A loopback web server for the download tests: /small.png, /big.png, /slow.png (drips), /redirect?to=URL,
    else 404."""

    files: dict[str, bytes] = {}

    def do_GET(self):
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect?to="):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/slow.png":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
            return
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def image_host(address: str):
    """ImageHost on `address` (any of 127.0.0.0/8 is this machine); yields its base URL."""
    host = http.server.ThreadingHTTPServer((address, 0), ImageHost)
    host.daemon_threads = True
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        yield f"http://{address}:{host.server_address[1]}"
    finally:
        host.shutdown()
        host.server_close()


def ask_for(server, url: str) -> tuple[int, dict]:
    return post(server.url, "/v1/chat/completions", {**GOOD, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]}]})


# 127.0.0.2 stands for an intranet image store the operator allows with --allow-image-network.
INTRANET = (ipaddress.ip_network("127.0.0.2/32"),)


def test_remote_images_with_the_flag_bounded_in_bytes_and_time(engine_dir):
    image = shapes_image()
    ImageHost.files = {"/small.png": png_bytes(image), "/big.png": noise_png(200)}
    remote = limits(allow_remote=True, max_bytes=100_000, remote_timeout=1.0, remote_networks=INTRANET)
    with image_host("127.0.0.2") as base, running_server(engine_dir, limits=remote) as server:
        status, answer = ask_for(server, base + "/small.png")
        assert status == 200, answer
        want = post(server.url, "/v1/chat/completions", {**GOOD, "messages": [user_message("What is it?", image)]})
        assert answer["choices"][0]["message"]["content"] == want[1]["choices"][0]["message"]["content"]
        assert ask_for(server, f"{base}/redirect?to={base}/small.png")[0] == 200  # a redirect within the network
        status, error = ask_for(server, base + "/big.png")
        assert status == 400 and error["error"]["code"] == "image_too_large", error
        start = time.monotonic()
        status, error = ask_for(server, base + "/slow.png")
        assert status == 400 and error["error"]["code"] == "image_download_failed", error
        assert time.monotonic() - start < 10
        assert ask_for(server, base + "/small.png")[0] == 200


def test_remote_images_only_from_public_addresses(engine_dir):
    """Loopback, private and metadata addresses are refused after DNS resolution and on every redirect, and
    every failure reads the same: the server can't be used to scan the network it sits in."""
    ImageHost.files = {"/small.png": png_bytes(shapes_image())}
    remote = limits(allow_remote=True, remote_timeout=2.0, remote_networks=INTRANET)
    with image_host("127.0.0.1") as inside, image_host("127.0.0.2") as intranet, \
            running_server(engine_dir, limits=remote) as server:
        port = inside.rsplit(":", 1)[1]
        refused = [
            inside + "/small.png",  # a loopback service that answers
            f"http://localhost:{port}/small.png",  # a name, resolved first
            f"http://[::1]:{port}/small.png", f"http://0x7f000001:{port}/small.png",
            f"http://[::ffff:127.0.0.1]:{port}/small.png",
            "http://169.254.169.254/latest/meta-data/",  # cloud metadata
            "http://10.0.0.1/a.png", "http://192.168.1.1/a.png", "http://100.100.100.200/a.png",
            f"{intranet}/redirect?to={inside}/small.png",  # an allowed host redirecting inside
            f"{intranet}/missing.png",  # 404
            "http://127.0.0.2:9/closed.png",  # nothing listening
            "http://no-such-host.invalid/a.png",
        ]
        errors = set()
        for url in refused:
            start = time.monotonic()
            status, error = ask_for(server, url)
            assert status == 400 and error["error"]["code"] == "image_download_failed", (url, error)
            assert time.monotonic() - start < 5, url
            errors.add((error["error"]["message"], error["error"]["param"]))
        assert len(errors) == 1, errors
        assert ask_for(server, intranet + "/small.png")[0] == 200


@pytest.mark.parametrize("address, allowed", [
    ("93.184.216.34", True), ("2606:4700::6810:85e5", True), ("127.0.0.1", False), ("127.8.9.10", False),
    ("::1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.0.1", False), ("169.254.169.254", False),
    ("100.64.0.1", False), ("0.0.0.0", False), ("::", False), ("fd00:ec2::254", False), ("fe80::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("224.0.0.1", False), ("255.255.255.255", False),
    ("192.0.2.1", False), ("198.18.0.1", False),
])
def test_which_addresses_images_may_come_from(address, allowed):
    assert allowed_address(address, ()) is allowed
    assert allowed_address("127.0.0.2", INTRANET) and not allowed_address("127.0.0.1", INTRANET)
