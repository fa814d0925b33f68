"""README, followed as a newcomer would: every command of its code blocks, in order, in a fresh copy of the
repository (the files git tracks, or would track), each checked for what README says it does.

The plan below names each README command and how it runs here. Most run exactly as written. A few run with
extra flags that keep CI short, the reason beside them (the same command, on less data or for fewer steps);
a few run only in part (the install is offline into a folder, without dependencies: this environment already
holds them), and the lines that need a GPU are skipped. When README changes, its command list no longer
equals the plan and this test says which line to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Keeps a recipe's run to a few steps on a few samples: the command, its stages and the files it writes.
FEW_STEPS = " --set max_steps=2 --set global_batch=4 --set micro_batch=4"
PYTHON_ANSWERS = ["red", "3", "3", "3 orange"]  # what README's Python block prints, line by line


@dataclass(frozen=True)
class Step:
    """How one README command runs: `extra` flags appended (with the reason), or `skip` with the reason."""

    command: str
    expect: str = ""  # a text its output must contain
    extra: str = ""
    reason: str = ""
    skip: bool = False


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def readme_commands(text: str) -> list[str]:
    """The commands: each line of a bash block (continuations joined, comments dropped), each python block whole."""
    commands = []
    for language, body in readme_blocks(text):
        if language == "python":
            commands.append(body)
        elif language == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if line:
                    commands.append(re.sub(r"\s{2,}", " ", line))
    return commands


def chat_transcript(text: str) -> tuple[list[str], list[str]]:
    """The questions typed and the answers shown in README's terminal conversation."""
    block = next(body for language, body in readme_blocks(text) if not language and "> " in body)
    lines = block.splitlines()
    questions = [line[2:] for line in lines if line.startswith("> ") and line != "> /quit"]
    answers = [lines[i + 1] for i, line in enumerate(lines) if line.startswith("> ") and line != "> /quit"]
    return questions, answers


PLAN = [
    Step("make demo", expect="red\n",
         reason="runs the demo rule in this test's environment (BIN, STAMP): its install is the one CI's make test did"),
    Step("make test", skip=True, reason="the test suite this test belongs to"),
    Step('pip install ".[cpu]"', reason="offline into a folder, without dependencies (this environment holds them): "
                                 "the package and its aerie command, used below"),
    Step("pip install torch==2.13.0", skip=True, reason="installed in this environment by make test"),
    Step('pip install -e ".[build,quant,nvidia,serve,test,gpu]"', skip=True, reason="installed by make test"),
    Step("python build.py examples/eve-tiny --out out/eve-tiny --force", expect="built out/eve-tiny"),
    Step("python build.py examples/eve-tiny --out out/eve-tiny-fp16 --dtype fp16", expect="built out/eve-tiny-fp16"),
    Step("python build.py examples/eve-tiny --out out/eve-tiny-int4 --quant int4_awq", skip=True,
         reason="a minute on CI's two cores (calibration, the 900-question accuracy report); "
                "tests/test_quant_build.py builds INT4 engines through the same build.py --quant"),
    Step("python build.py examples/eve-tiny --out out/eve-tiny-trt --backend tensorrt", skip=True,
         reason="needs an NVIDIA GPU with TensorRT-LLM (tests/test_tensorrt_engine.py, marked gpu)"),
    Step("python build.py examples/eve-tiny --out out/eve-tiny-trt-int4 --backend tensorrt --quant int4_awq",
         skip=True, reason="the vision plan is built for the GPU present; tests/test_quant_build.py builds this "
                           "engine for a named one (--compute-capability SM89)"),
    Step("python -m quant examples/eve-tiny --mode int4_awq --out out/eve-tiny-q", skip=True,
         reason="tests/test_quant_build.py runs python -m quant and builds from its output"),
    Step('python -m runtime out/eve-tiny --image examples/images/shapes.png --prompt "What colour is the shape?"',
         expect="red\n"),
    Step('python -m runtime out/eve-tiny --image examples/images/count.png --prompt "How many shapes are there?" '
         "--verbose", expect="3\n"),
    Step('python -m runtime out/eve-tiny --image examples/images/shapes.png --prompt "What colour is the shape?" '
         "--json", expect='"text": "red"'),
    Step('echo "How many shapes are there?" | python -m runtime out/eve-tiny --image examples/images/count.png '
         "--prompt -", expect="3\n"),
    Step('aerie run out/eve-tiny --image examples/images/shapes.png --prompt "What colour is the shape?"',
         expect="red\n"),
    Step("python -m runtime out/eve-tiny --image examples/images/count.png --chat",
         reason="answers README's conversation, typed on stdin"),
    Step("<python>", reason="README's Python block, run as a script"),
    Step("python -m runtime serve out/eve-tiny --port 8000",
         reason="on a free port (a shared machine); asked once, then stopped with SIGTERM"),
    Step("python -m runtime demo out/eve-tiny --port 8080",
         reason="on a free port; the page fetched, then stopped with SIGTERM (tests/test_demo_page.py drives it)"),
    Step("python -m runtime triton out/eve-tiny --launch", expect="configs checked against Triton's ModelConfig",
         reason="without --launch: its tritonserver environment is made for one checkout, not this copy "
                "(tests/test_triton_server.py starts tritonserver on such repositories)"),
    Step("python -m runtime.eval.synthetic --out out/synth", extra=" --train 64 --val 8 --test 45",
         reason="fewer samples (30,900 images otherwise); the evaluations and recipes below run on them"),
    Step("python -m runtime.eval out/eve-tiny --benchmark synthetic --data out/synth/test.json --out out/eval/eve-tiny",
         expect="answers: out/eval/eve-tiny/answers.jsonl"),
    Step("python evaluate.py --benchmark synthetic --data out/synth/test.json --torch examples/eve-tiny "
         "--engine fp32=out/eve-tiny --engine fp16=out/eve-tiny-fp16 --out out/accuracy/eve-tiny", expect="fp16"),
    Step("python -m training.train --recipe training/recipes/eve_tiny.toml --data out/synth --out out/runs/eve-tiny "
         "--threads 1", expect="stage3-sft", extra=FEW_STEPS, reason="two steps a stage (31 minutes otherwise)"),
    Step("python -m training.release --from out/runs/eve-tiny/stage3-sft --to out/release/eve-tiny",
         expect="out/release/eve-tiny"),
    Step("python -m training.train --recipe training/recipes/eagle2_5_tiny.toml --data out/synth "
         "--out out/runs/eagle2_5-tiny --threads 1", expect="stage2-sft", extra=FEW_STEPS,
         reason="two steps a stage (38 minutes otherwise)"),
    Step("python -m training.release --from out/runs/eagle2_5-tiny/stage2-sft --to out/release/eagle2_5-tiny",
         expect="out/release/eagle2_5-tiny"),
    Step("python -m training.train --recipe training/recipes/eagle2_tiny.toml --data out/synth "
         "--out out/runs/eagle2-tiny --threads 1", expect="stage2-sft", extra=FEW_STEPS,
         reason="two steps a stage (the demo model's training otherwise)"),
    Step("python -m training.release --from out/runs/eagle2-tiny/stage2-sft --to out/release/eagle2-tiny",
         expect="out/release/eagle2-tiny"),
    Step("python -m training.train --recipe training/recipes/eagle_x5_tiny.toml --data out/synth "
         "--out out/runs/eagle_x5-tiny --threads 1", expect="stage3-sft-continued", extra=FEW_STEPS,
         reason="two steps a stage (97 minutes otherwise)"),
    Step("python -m training.release --from out/runs/eagle_x5-tiny/stage3-sft-continued --to out/release/eagle_x5-tiny "
         "--dtype float16", expect="out/release/eagle_x5-tiny"),
    Step("python -m training.train --recipe training/recipes/evev2_tiny.toml --data out/synth "
         "--out out/runs/evev2-tiny --threads 1", expect="stage5-sft-continued", extra=FEW_STEPS,
         reason="two steps a stage (46 minutes otherwise)"),
    Step("python -m training.release --from out/runs/evev2-tiny/stage5-sft-continued --to out/release/evev2-tiny",
         expect="out/release/evev2-tiny"),
]


def test_the_plan_is_readme():
    """Every README command has its step, in README's order (and nothing else does)."""
    commands = ["<python>" if "\n" in c else c for c in readme_commands((ROOT / "README.md").read_text())]
    assert commands == [step.command for step in PLAN]


def fresh_copy(destination: Path) -> Path:
    """The files a clone of this checkout would hold, its uncommitted changes included."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Walk:
    """The copy, the newcomer's shell environment, and a record of what ran how."""

    def __init__(self, repo: Path, scripts: Path):
        self.repo, self.scripts = repo, scripts
        path = os.pathsep.join([str(scripts / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])
        # The copy's own code wins for python -m and scripts (the current directory comes first); the installed
        # package is where `aerie` imports from.
        self.env = {**os.environ, "PATH": path, "PYTHONPATH": str(scripts), "PYTHONUNBUFFERED": "1"}
        self.log: list[str] = []

    def run(self, command: str, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run(["bash", "-c", command], cwd=self.repo, env=self.env, input=stdin, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def start(self, command: str, ready: str) -> tuple[subprocess.Popen, str]:
        """Start a server; return it and its first stderr line that matches `ready` (a regex)."""
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.repo, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen.append(line)
            match = re.search(ready, line)
            if match:
                return proc, match.group(0)
            if not line and proc.poll() is not None:
                break
        proc.kill()
        raise AssertionError(f"{command} did not start:\n{''.join(seen)}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.read()


def run_step(walk: Walk, step: Step, readme: str) -> None:
    command = step.command + step.extra
    if step.command == "make demo":
        stamp = walk.repo / ".venv" / ".installed"
        stamp.parent.mkdir()
        stamp.touch()  # the install is done: this environment is it
        out = walk.run(f"make demo BIN={Path(sys.executable).parent}").stdout
    elif step.command == 'pip install ".[cpu]"':
        walk.run(f"python -m pip install -qq --no-deps --no-build-isolation --no-compile --target {walk.scripts} '.[cpu]'")
        shutil.rmtree(walk.repo / "build", ignore_errors=True)
        out = walk.run("aerie --help").stdout
        assert "run" in out and "serve" in out, out
    elif step.command.endswith("--chat"):
        questions, answers = chat_transcript(readme)
        out = walk.run(command, stdin="\n".join([*questions, "/quit"]) + "\n").stdout
        assert out.splitlines()[1:] == [f"> {a}" for a in answers] + ["> "], out
    elif step.command == "<python>":
        code = next(body for language, body in readme_blocks(readme) if language == "python")
        (walk.repo / "readme_example.py").write_text(code)
        out = walk.run("python readme_example.py").stdout
        assert out.splitlines() == PYTHON_ANSWERS, out
    elif " serve " in step.command or " demo " in step.command:
        port = free_port()
        proc, url = walk.start(re.sub(r"--port \d+", f"--port {port}", command), r"http://127\.0\.0\.1:\d+")
        try:
            assert get(f"http://127.0.0.1:{port}/health")[0] == 200
            if " demo " in step.command:
                assert b"Aerie demo" in get(f"http://127.0.0.1:{port}/")[1]
            else:
                body = json.dumps({"messages": [{"role": "user", "content": "What colour is the shape?"}],
                                   "max_tokens": 4}).encode()
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    assert json.load(response)["choices"][0]["message"]["content"]
        finally:
            assert stop(proc) == 0
        out = url
    elif " triton " in step.command:
        out = walk.run(command.replace(" --launch", "")).stdout
    else:
        out = walk.run(command).stdout
    assert step.expect in out, f"{command}: {step.expect!r} not in its output:\n{out[-3000:]}"


@pytest.mark.slow
def test_readme_walkthrough(tmp_path):
    readme = (ROOT / "README.md").read_text()
    walk = Walk(fresh_copy(tmp_path / "aerie"), tmp_path / "installed")
    for step in PLAN:
        if step.skip:
            print(f"\nnot run: {step.command}  ({step.reason})")
            continue
        start = time.monotonic()
        run_step(walk, step, readme)
        print(f"\n{time.monotonic() - start:5.1f} s  {step.command}{step.extra}")
