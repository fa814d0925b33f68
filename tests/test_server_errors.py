"""Malformed and over-limit requests sent raw: each gets a 4xx with an OpenAI-style error body naming the
problem, and a good request right after it (on the same keep-alive connection where the protocol allows)
still gets its answer."""

from __future__ import annotations

import base64
import http.client
import json
import socket

import pytest
from PIL import Image

from serving_helpers import data_url, limits, png_bytes, running_server, shapes_image
from tiny_engines import built_engine

GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "What colour is the shape?"}], "max_tokens": 4,
        "temperature": 0}
MAX_BYTES = 100_000


def chat(**fields) -> dict:
    return {**GOOD, **fields}


def with_image(url: str, text: str = "What is this?") -> dict:
    return chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                        {"type": "text", "text": text}]}])


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 bytes per pixel."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels))


CASES = {
    "bad json": (b'{"model": "tiny", "messages": [', 400, None, "invalid_json"),
    "json array": (b"[1, 2]", 400, None, "invalid_json"),
    "not utf-8": (b"\xff\xfe{}", 400, None, "invalid_json"),
    "unknown model": (chat(model="gpt-4o"), 404, "model", "model_not_found"),
    "model not a string": (chat(model=7), 400, "model", "invalid_type"),
    "no messages": ({"model": "tiny"}, 400, "messages", "invalid_type"),
    "empty messages": (chat(messages=[]), 400, "messages", "invalid_value"),
    "messages a string": (chat(messages="hello"), 400, "messages", "invalid_type"),
    "message not an object": (chat(messages=["hello"]), 400, "messages[0]", "invalid_type"),
    "unknown role": (chat(messages=[{"role": "robot", "content": "hi"}]), 400, "messages[0].role", "invalid_value"),
    "content a number": (chat(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content", "invalid_type"),
    "unknown part type": (chat(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]), 400,
                          "messages[0].content[0].type", "unsupported_content"),
    "part type a list": (chat(messages=[{"role": "user", "content": [{"type": ["image_url"]}]}]), 400,
                         "messages[0].content[0].type", "unsupported_content"),
    "text part not a string": (chat(messages=[{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]), 400,
                               "messages[0].content[0].text", "invalid_type"),
    "ends with assistant": (chat(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
                            400, "messages", "invalid_value"),
    "image in assistant": (chat(messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": data_url(shapes_image())}}]},
        {"role": "user", "content": "and?"}]), 400, "messages[1].content[0]", "invalid_value"),
    "placeholder in text": (chat(messages=[{"role": "user", "content": [{"type": "text", "text": "<image> hi"}]}]),
                            400, "messages[0].content", "invalid_value"),
    "temperature a string": (chat(temperature="hot"), 400, "temperature", "invalid_type"),
    "temperature too high": (chat(temperature=3.5), 400, "temperature", "invalid_value"),
    "top_p zero": (chat(top_p=0), 400, "top_p", "invalid_value"),
    "max_tokens zero": (chat(max_tokens=0), 400, "max_tokens", "invalid_value"),
    "max_tokens a float": (chat(max_tokens=2.5), 400, "max_tokens", "invalid_type"),
    "max_tokens over the cap": (chat(max_tokens=100_000), 400, "max_tokens", "invalid_value"),
    "stop a number": (chat(stop=7), 400, "stop", "invalid_type"),
    "five stops": (chat(stop=["a", "b", "c", "d", "e"]), 400, "stop", "invalid_type"),
    "seed a string": (chat(seed="x"), 400, "seed", "invalid_type"),
    "negative seed": (chat(seed=-1), 400, "seed", "invalid_value"),
    "stream a string": (chat(stream="yes"), 400, "stream", "invalid_type"),
    "n two": (chat(n=2), 400, "n", "unsupported_parameter"),
    "frequency penalty": (chat(frequency_penalty=0.5), 400, "frequency_penalty", "unsupported_parameter"),
    "tools": (chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools", "unsupported_parameter"),
    "json response format": (chat(response_format={"type": "json_object"}), 400, "response_format",
                             "unsupported_parameter"),
    "image over the byte limit": (with_image(data_url(noise_png(200))), 400, "messages[0].content[0].image_url",
                                  "image_too_large"),
    "image over the pixel limit": (with_image(data_url(Image.new("RGB", (1200, 1000)))), 400,
                                   "messages[0].content[0].image_url", "invalid_image"),
    "not an image": (with_image(data_url(b"GIF89a but not really")), 400, "messages[0].content[0].image_url",
                     "invalid_image"),
    "bad base64": (with_image("data:image/png;base64,@@@@"), 400, "messages[0].content[0].image_url",
                   "invalid_image_url"),
    "data url not base64": (with_image("data:image/png,rawbytes"), 400, "messages[0].content[0].image_url",
                            "invalid_image_url"),
    "data url of text": (with_image("data:text/plain;base64," + base64.b64encode(b"hi").decode()), 400,
                         "messages[0].content[0].image_url", "invalid_image_url"),
    "remote url refused": (with_image("http://127.0.0.1:9/cat.png"), 400, "messages[0].content[0].image_url",
                           "invalid_image_url"),
    "local path refused": (with_image("/etc/hostname"), 400, "messages[0].content[0].image_url", "invalid_image_url"),
    "too many images": (chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(shapes_image())}}] * 3}]), 400,
                        "messages[0].content[2]", "too_many_images"),
    "prompt past the context": (chat(messages=[{"role": "user", "content": "red green blue " * 2000}]), 400,
                                "messages", "context_length_exceeded"),
    "nested a hundred thousand deep": (b"[" * 100_000, 400, None, "invalid_json"),
    "integer of 5000 digits": (b'{"max_tokens": ' + b"9" * 5000 + b"}", 400, None, "invalid_json"),
    "negative seed": (chat(seed=-1), 400, "seed", "invalid_value"),
    "unpaired surrogate in text": (b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}', 400,
                                   "messages[0].content", "invalid_value"),
    "unpaired surrogate in a text part": (b'{"messages": [{"role": "user", "content": [{"type": "text", '
                                          b'"text": "\\udfff"}]}]}', 400, "messages[0].content[0].text",
                                          "invalid_value"),
    "unpaired surrogate in stop": (b'{"stop": "\\ud83d", "messages": [{"role": "user", "content": "hi"}]}', 400,
                                   "stop", "invalid_value"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine_dir = built_engine("eve", tmp_path_factory)[1]
    with running_server(engine_dir, limits=limits(max_bytes=MAX_BYTES, max_pixels=1_000_000, max_images=2,
                                                  max_tokens=64)) as server:
        yield server


@pytest.fixture
def conn(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    yield conn
    conn.close()


def send(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | dict | None = None,
         headers: dict | None = None) -> tuple[int, dict, dict]:
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"null"), dict(response.headers)


def assert_good_request_succeeds(conn: http.client.HTTPConnection) -> None:
    status, body, _ = send(conn, "POST", "/v1/chat/completions", GOOD)
    assert status == 200, body
    assert isinstance(body["choices"][0]["message"]["content"], str) and body["usage"]["completion_tokens"] >= 1


def assert_openai_error(body: dict, param, code) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param and error["code"] == code, error


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_is_refused_and_the_server_goes_on(name, conn):
    body, status, param, code = CASES[name]
    got, error, _ = send(conn, "POST", "/v1/chat/completions", body)
    assert got == status, (name, error)
    assert_openai_error(error, param, code)
    assert error["error"]["type"] == "invalid_request_error"
    assert_good_request_succeeds(conn)  # same keep-alive connection


def test_body_over_the_limit_is_413_and_closes(server, conn):
    big = b"x" * (server.options.max_body_bytes + 1)
    status, error, headers = send(conn, "POST", "/v1/chat/completions", big)
    assert status == 413 and headers.get("Connection") == "close"
    assert_openai_error(error, None, "request_too_large")
    fresh = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    assert_good_request_succeeds(fresh)
    fresh.close()


def test_unknown_endpoint_and_wrong_method(conn):
    status, error, _ = send(conn, "GET", "/v1/completions/nothing")
    assert status == 404
    assert_openai_error(error, None, "not_found")
    status, error, _ = send(conn, "GET", "/v1/chat/completions")
    assert status == 405
    status, error, _ = send(conn, "POST", "/v1/models/tiny", b"{}")
    assert status == 405 or status == 404
    status, error, _ = send(conn, "GET", "/v1/models/gpt-4o")
    assert status == 404 and error["error"]["code"] == "model_not_found"
    assert_good_request_succeeds(conn)


def test_chunked_body_is_refused_with_411(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        body = json.dumps(GOOD).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 411"), reply[:100]
    fresh = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    assert_good_request_succeeds(fresh)
    fresh.close()


def test_garbage_instead_of_http(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n")  # a TLS hello, say
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n")[0]
    fresh = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    assert_good_request_succeeds(fresh)
    fresh.close()
