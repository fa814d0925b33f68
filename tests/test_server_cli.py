"""`python -m runtime serve` as a user runs it: a process that prints where it listens, answers, and stops
cleanly on SIGTERM; bad arguments and a missing engine are one-line errors with exit codes."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serving_helpers import post
from tiny_engines import built_engine

ROOT = Path(__file__).resolve().parents[1]


def start(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    """Start `python -m runtime ARGS` and wait for the line that gives its URL: (process, URL, its stderr lines,
    a list that goes on filling as the process writes)."""
    proc = subprocess.Popen([sys.executable, "-m", "runtime", *args], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    end = time.monotonic() + 120
    while time.monotonic() < end and proc.poll() is None:
        for line in list(output):
            match = re.search(r"http://[\d.]+:(\d+)", line)
            if match:
                return proc, f"http://127.0.0.1:{match.group(1)}", output
        time.sleep(0.1)
    proc.kill()
    reader.join(5)
    raise AssertionError("the server did not start:\n" + "".join(output))


def test_serve_answers_and_stops_on_sigterm(tmp_path_factory):
    engine_dir = built_engine("eve", tmp_path_factory)[1]
    proc, url, output = start("serve", str(engine_dir), "--port", "0", "--model-name", "tiny", "--threads", "1")
    try:
        status, body = post(url, "/v1/chat/completions", {"model": "tiny", "max_tokens": 4, "temperature": 0,
                                                          "messages": [{"role": "user", "content": "Hello?"}]})
        assert status == 200 and body["usage"]["completion_tokens"] >= 1, body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        time.sleep(0.2)
        assert "stopped\n" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_beyond_loopback_without_a_key_warns_and_the_key_comes_from_the_environment(tmp_path_factory):
    engine_dir = built_engine("eve", tmp_path_factory)[1]
    proc, _, output = start("serve", str(engine_dir), "--host", "0.0.0.0", "--port", "0", "--threads", "1")
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert "warning: listening on 0.0.0.0 without an API key" in "".join(output), output
    proc, url, output = start("serve", str(engine_dir), "--host", "0.0.0.0", "--port", "0", "--threads", "1",
                            "--model-name", "tiny", env={"AERIE_API_KEY": "sk-env"})
    try:
        assert "warning" not in "".join(output), output
        body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "Hello?"}]}
        assert post(url, "/v1/chat/completions", body)[0] == 401
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Authorization": "Bearer sk-env"})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


@pytest.mark.parametrize("args, code, message", [
    (["serve"], 2, "the following arguments are required: engine_dir"),
    (["serve", "/nonexistent/engine"], 1, "error: /nonexistent/engine: no such engine directory"),
    (["serve", ".", "--max-queue", "0"], 2, "--max-queue must be at least 1"),
])
def test_bad_invocations_are_one_line_errors(args, code, message):
    done = subprocess.run([sys.executable, "-m", "runtime", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
