"""Fuzz: chat completion and completion requests generated from valid ones (fields deleted, retyped, set to hostile values;
damaged images; damaged bytes) sent by three clients at once to a real server on a tiny engine. Every answer is
a 2xx or a 4xx with an OpenAI error body (a stream ends in an answer or a 4xx error event), never a 5xx; a
good request succeeds after every batch, and /metrics counts no 5xx at the end."""

from __future__ import annotations

import base64
import http.client
import json
import threading

import pytest

from fuzz import SEED, Fuzzer, counts, skip_unless_asked
from serving_helpers import data_url, limits, png_bytes, running_server, shapes_image
from test_fuzz_images import seed_images
from test_image_io import png_bytes as raw_png
from tiny_engines import built_engine

QUICK = 2000
CLIENTS = 3
BATCH = 100
GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "What colour is the shape?"}], "max_tokens": 3,
        "temperature": 0}
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
COMPLETION = {"model": "tiny", "prompt": "USER: What colour is the shape? ASSISTANT:", "max_tokens": 3, "temperature": 0}


def base_requests() -> list[tuple[str, dict]]:
    image = {"type": "image_url", "image_url": {"url": data_url(shapes_image())}}
    question = {"type": "text", "text": "What colour is the shape?"}
    chats = [
        GOOD,
        {**GOOD, "messages": [{"role": "user", "content": [image, question]}], "stream": True,
         "stream_options": {"include_usage": True}},
        {**GOOD, "messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": [image, question]},
                              {"role": "assistant", "content": "Red."},
                              {"role": "user", "content": [question]}],
         "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 3, "stop": ["\n"], "repetition_penalty": 1.1},
        {**GOOD, "messages": [{"role": "user", "content": [image, image, question]}], "max_completion_tokens": 2},
    ]
    completions = [
        COMPLETION,
        {**COMPLETION, "prompt": ["Hi </s><|im_end|> <image>"], "stream": True, "echo": True,
         "stream_options": {"include_usage": True}},
        {**COMPLETION, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n"], "echo": False, "logprobs": None},
    ]
    return [(CHAT, body) for body in chats] + [(COMPLETIONS, body) for body in completions]


def image_urls(fuzzer: Fuzzer) -> list[str]:
    """Damaged images of every format, headers claiming huge sizes, and URLs the server must refuse."""
    seeds = seed_images()
    damaged = [data_url(fuzzer.mutate_bytes(fuzzer.rng.choice(seeds))) for _ in range(60)]
    giants = [data_url(raw_png(w, h, 8, 2, None)) for w, h in ((1, 16_000_000), (4000, 4000), (20000, 1), (0, 5))]
    other = ["data:image/png;base64," + base64.b64encode(png_bytes(shapes_image((3, 900)))).decode(),
             "http://127.0.0.1:9/a.png", "file:///etc/hostname", "/dev/zero", "data:,", ""]
    return damaged + giants + other


def cases(fuzzer: Fuzzer, n: int) -> list[tuple[str, bytes]]:
    """(path, body) of each generated request."""
    bases, urls = base_requests(), image_urls(fuzzer)
    out = []
    for _ in range(n):
        path, base = fuzzer.rng.choice(bases)
        body, _ = fuzzer.mutate(base, fuzzer.rng.randrange(1, 4))
        if fuzzer.chance(0.3):  # a damaged or refused image in place of the good one
            text = json.dumps(body).replace(json.dumps(data_url(shapes_image()))[1:-1], fuzzer.rng.choice(urls), 1)
        else:
            text = json.dumps(body)
        data = text.encode("utf-8", "surrogatepass")
        out.append((path, fuzzer.mutate_bytes(data) if fuzzer.chance(0.1) else data))
    return out


def check_answer(status: int, headers, body: bytes, stream: bool) -> str | None:
    """None if the answer is acceptable, else what is wrong with it."""
    if status >= 500:
        return f"{status} {body[:300]!r}"
    if status >= 400:
        error = json.loads(body).get("error")
        if not (isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)):
            return f"{status} without an OpenAI error body: {body[:200]!r}"
        return None
    if "text/event-stream" in headers.get("Content-Type", ""):
        events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
        if events[-1] != "[DONE]":
            return f"a stream that does not end in [DONE]: {events[-3:]}"
        for event in events[:-1]:
            error = json.loads(event).get("error")
            if error and error["code"] in ("engine_error", "internal", "unavailable"):
                return f"an error event: {error}"
        return None
    choice = json.loads(body)["choices"][0]
    content = choice["message"]["content"] if "message" in choice else choice["text"]
    return None if isinstance(content, str) else f"200 without text: {body[:200]!r}"


def send(port: int, path: str, data: bytes, conn: http.client.HTTPConnection | None):
    """(status, headers, body) on `conn`, reconnecting when the server closed it."""
    for attempt in range(2):
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", path, data, {"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            if response.getheader("Connection") == "close":
                conn.close()
                conn = None
            return response.status, response.headers, body, conn
        except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
            conn.close()
            conn = None
            if attempt:
                raise
    raise AssertionError("unreachable")


@pytest.mark.parametrize("cases_n", counts(QUICK, 20_000))
def test_generated_requests_get_2xx_or_4xx(cases_n, request, tmp_path_factory):
    skip_unless_asked(request, cases_n, QUICK)
    engine = built_engine("eve", tmp_path_factory)[1]
    bodies = cases(Fuzzer(SEED), cases_n)
    wrong: list[str] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    server_limits = limits(max_tokens=8, max_images=3, max_bytes=300_000, max_pixels=2_000_000)
    with running_server(engine, max_batch=2, limits=server_limits, max_queue=16, request_timeout=30) as server:
        def client(index: int) -> None:
            conn = None
            for batch_start in range(index * BATCH, len(bodies), CLIENTS * BATCH):
                for path, data in bodies[batch_start:batch_start + BATCH]:
                    status, headers, body, conn = send(server.port, path, data, conn)
                    problem = check_answer(status, headers, body, b'"stream": true' in data)
                    with lock:
                        statuses[status] = statuses.get(status, 0) + 1
                        if problem:
                            wrong.append(f"{problem}  <- {data[:300]!r}")
                status, _, body, conn = send(server.port, CHAT, json.dumps(GOOD).encode(), conn)
                if status != 200:
                    with lock:
                        wrong.append(f"a good request after a batch got {status}: {body[:200]!r}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(900)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        conn.close()
    assert not wrong, "\n".join(wrong[:10])
    assert not [line for line in metrics.splitlines() if 'status="5' in line], metrics
    assert statuses.get(200, 0) > cases_n // 20 and statuses.get(400, 0) > cases_n // 5, statuses
