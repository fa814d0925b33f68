"""docs/serving.md, run: every bash and python block of it, against the servers its own commands start, on the
demo model (examples/eve-tiny built as out/eve-tiny), prints what the text block under it shows.

The comment tag before each block says how it runs:
    openai-server, demo-server   the command starts a server: run in the background, on a free port
    openai                       a client of the OpenAI server (its output is compared)
    triton-server                the Triton commands: each runs, `--launch` in the background on free ports; the
                                 bare `tritonserver` line needs a Triton container and is left out
    triton                       a client of that Triton server (its output is compared)
    skip (reason)                not run, for the reason given
A block without a tag fails the test, so a new example can't go untested. Ports and `out/eve-tiny` are replaced
by this test's; `...` in a shown output stands for any text (ids, times). The Triton blocks need the Triton
environment (runtime/triton/environment.py; created on first use, pip needs the network): without it they are
skipped, saying why.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.triton.launch import free_port
from tiny_engines import run_build

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "serving.md"
ENGINE = "out/eve-tiny"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
TAG = re.compile(r"<!-- doc-test: ([\w-]+)(?: \((.+?)\))? -->\s*$")
SERVERS = ("openai-server", "demo-server", "triton-server")
CLIENTS = ("openai", "triton")


@dataclass(frozen=True)
class Snippet:
    line: int
    tag: str
    language: str
    code: str
    output: str | None  # the text block right under it, if any
    reason: str = ""


def snippets(text: str) -> list[Snippet]:
    """The bash and python blocks with their tags and shown outputs."""
    found, blocks = [], list(BLOCK.finditer(text))
    for i, block in enumerate(blocks):
        language, code = block.group(1), block.group(2)
        if language not in ("bash", "python"):
            continue
        line = text.count("\n", 0, block.start()) + 1
        before = text[:block.start()].rstrip("\n").rsplit("\n", 1)[-1]
        tag = TAG.match(before)
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        output = following.group(2) if following is not None and following.group(1) == "text" and \
            following.start() == block.end() else None
        found.append(Snippet(line, tag.group(1) if tag else "", language, code, output,
                             (tag.group(2) or "") if tag else ""))
    return found


SNIPPETS = snippets(DOC.read_text())


def test_every_block_is_tagged_and_every_client_shows_its_output():
    untagged = [s.line for s in SNIPPETS if s.tag not in (*SERVERS, *CLIENTS, "skip")]
    assert not untagged, f"docs/serving.md: blocks without a known doc-test tag at lines {untagged}"
    silent = [s.line for s in SNIPPETS if s.tag in CLIENTS and s.output is None]
    assert not silent, f"docs/serving.md: examples without the output they print (a text block) at lines {silent}"
    assert sorted(s.tag for s in SNIPPETS if s.tag in SERVERS) == sorted(SERVERS), "one block per server"
    assert all(s.reason for s in SNIPPETS if s.tag == "skip"), "a skipped block says why"


def matches(shown: str, printed: str) -> bool:
    """Whether `printed` is what `shown` shows, line by line (blank lines and trailing spaces aside; `...`: any text)."""
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.splitlines() if line.strip()]

    pattern = "\n".join(".*?".join(map(re.escape, line.split("..."))) for line in lines(shown))
    return re.fullmatch(pattern, "\n".join(lines(printed)), re.S) is not None


def shell_env() -> dict[str, str]:
    """This Python first on PATH (`python` in the examples), this checkout's runtime importable."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def localize(code: str, engine: Path, ports: dict[str, int]) -> str:
    code = code.replace(ENGINE, str(engine))
    for documented, port in ports.items():
        code = re.sub(rf"\b(127\.0\.0\.1|localhost):{documented}\b", rf"\g<1>:{port}", code)
    return code


def wait_until(url: str, process: subprocess.Popen, log: Path, seconds: float = 300) -> None:
    end = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        assert process.poll() is None, f"the server ended ({process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < end, f"{url} did not answer:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


class Background:
    """A documented command running in the background (its own process group), stopped with SIGTERM."""

    def __init__(self, command: str, log: Path):
        self.log = log
        self.process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=ROOT, env=shell_env(),
                                        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def server_snippet(tag: str) -> Snippet:
    return next(s for s in SNIPPETS if s.tag == tag)


def command_lines(code: str) -> list[str]:
    return [re.sub(r"\s+#.*$", "", line).strip() for line in code.replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    """examples/eve-tiny built as in `make demo`, in a folder named like out/eve-tiny (the model's name)."""
    engine = tmp_path_factory.mktemp("docs") / "out" / "eve-tiny"
    code, out, err = run_build([str(ROOT / "examples" / "eve-tiny"), "--out", str(engine)])
    assert code == 0, out + err
    return engine


@pytest.fixture(scope="module")
def openai_server(engine, tmp_path_factory):
    """The documented `python -m runtime serve` command, on a free port: {documented port: port}."""
    [command] = command_lines(server_snippet("openai-server").code)
    port = free_port()
    command = localize(command, engine, {}).replace("--port 8000", f"--port {port}")
    server = Background(command, tmp_path_factory.mktemp("openai") / "server.log")
    try:
        wait_until(f"http://127.0.0.1:{port}/health", server.process, server.log)
        yield {"8000": port}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def triton_server(engine, tmp_path_factory):
    """The documented Triton commands: the repository written, then `--launch` on free ports."""
    from runtime.triton.environment import ensure_environment

    try:
        ensure_environment(quiet=True)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"no Triton environment (.venv-triton could not be created: {e}); the Triton examples need "
                    "tritonserver")
    ports = {"8000": free_port(), "8001": free_port(), "8002": free_port()}
    launched = None
    logs = tmp_path_factory.mktemp("triton")
    try:
        for command in command_lines(server_snippet("triton-server").code):
            if command.startswith("tritonserver "):
                continue  # the container's own binary on the repository: what --launch runs here
            command = localize(command, engine, {})
            if "--launch" in command:
                assert launched is None, "two --launch lines"
                flags = f" --http-port {ports['8000']} --grpc-port {ports['8001']} --metrics-port {ports['8002']}"
                launched = Background(command + flags, logs / "launch.log")
                wait_until(f"http://127.0.0.1:{ports['8000']}/v2/health/ready", launched.process, launched.log)
            else:
                done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=shell_env(), capture_output=True,
                                      text=True, timeout=300)
                assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
        assert launched is not None, "no --launch line: nothing to run the Triton examples against"
        yield ports
    finally:
        if launched is not None:
            launched.stop()


def run_snippet(snippet: Snippet, engine: Path, ports: dict[str, int]) -> str:
    code = localize(snippet.code, engine, ports)
    argv = [sys.executable, "-c", code] if snippet.language == "python" else ["bash", "-c", code]
    done = subprocess.run(argv, cwd=ROOT, env=shell_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"docs/serving.md line {snippet.line} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.tag in CLIENTS], ids=lambda s: f"line{s.line}")
def test_example_prints_what_the_doc_shows(snippet, engine, request):
    ports = request.getfixturevalue("openai_server" if snippet.tag == "openai" else "triton_server")
    printed = run_snippet(snippet, engine, ports)
    assert matches(snippet.output, printed), \
        f"docs/serving.md line {snippet.line} printed:\n{printed}\nwhile the doc shows:\n{snippet.output}"


def test_demo_command_serves_the_page(engine, tmp_path):
    [command] = command_lines(server_snippet("demo-server").code)
    port = free_port()
    page = Background(f"{localize(command, engine, {})} --port {port}", tmp_path / "demo.log")
    try:
        wait_until(f"http://127.0.0.1:{port}/health", page.process, page.log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
    finally:
        page.stop()


def test_matches_reads_ellipses_as_any_text():
    assert matches('{"id": "cmpl-...", "x": 1}\n\ndata: [DONE]', '{"id": "cmpl-abc", "x": 1}\ndata: [DONE]\n')
    assert not matches('{"id": "cmpl-...", "x": 1}', '{"id": "cmpl-abc", "x": 2}')
    assert not matches("red", "red\nred")
