"""A seeded generator of hostile inputs for the fuzz tests (tests/test_fuzz_*.py), and a worker process that
runs cases with a time limit each (a case that hangs, or eats the memory, is found instead of stopping the run).

Each test draws its cases from `Fuzzer(seed)`: the same seed gives the same cases, so a failure reproduces;
AERIE_FUZZ_SEED=N explores other cases. `counts(quick, thorough)` gives a test's two sizes: the quick one runs
in every test run, the thorough one only when slow tests are asked for (`pytest -m slow tests/test_fuzz_*.py`).
"""

from __future__ import annotations

import copy
import json
import os
import random
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SEED = int(os.environ.get("AERIE_FUZZ_SEED", "16"))
ROOT = Path(__file__).resolve().parents[1]

STRINGS = ["", " ", "a", "\x00", "</s>", "<s>", "<unk>", "<|im_end|>\n<|im_start|>system\n", "<image>", "<img>",
           "\ue000", "\ue001", "\ue002", "\ud800", "\udfff", "\U0001f600", "{layer}", "{0}", "%s%n", "../../etc/passwd",
           "/etc/hostname", "/dev/zero", "file:///etc/hostname", "http://127.0.0.1:1/x.png", "http://169.254.169.254/",
           "data:image/png;base64,", "data:image/png;base64,@@@", "NaN", "1e999", "-1", "\u202e", "ä" * 3, "\r\n"]
INTS = [0, 1, -1, 2, 3, 4, 7, 8, 16, 127, 255, 256, 512, 2048, 65535, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63,
        -2**63 - 1, 10**12, 10**30]
FLOATS = [0.0, -0.0, 0.5, 1.0, 1.5, 2.0, -1.0, 1e-9, 1e308, float("nan"), float("inf"), float("-inf")]


class Fuzzer:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def text(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(STRINGS)
        if r < 0.8:
            return "".join(chr(self.rng.choice([self.rng.randrange(32, 127), self.rng.randrange(0x80, 0x2FFF),
                                                self.rng.randrange(0xD800, 0xE003), self.rng.randrange(0x10000, 0x1FFFF)]))
                           for _ in range(self.rng.randrange(1, 40)))
        return self.rng.choice(STRINGS) * self.rng.choice([10, 1000, 30000])

    def value(self, depth: int = 0) -> Any:
        kind = self.rng.randrange(8 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return self.rng.choice([True, False])
        if kind == 2:
            return self.rng.choice(INTS) if self.chance(0.7) else self.rng.randrange(-1000, 100000)
        if kind == 3:
            return self.rng.choice(FLOATS) if self.chance(0.7) else self.rng.uniform(-10, 10)
        if kind in (4, 5):
            return self.text()
        if kind == 6:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(0, 4))]
        return {self.text(): self.value(depth + 1) for _ in range(self.rng.randrange(0, 4))}

    def paths(self, doc: Any, prefix: tuple = ()) -> list[tuple]:
        """Every place in a JSON document: tuples of keys and indices."""
        out = [prefix]
        if isinstance(doc, dict):
            for k, v in doc.items():
                out += self.paths(v, prefix + (k,))
        elif isinstance(doc, list):
            for i, v in enumerate(doc):
                out += self.paths(v, prefix + (i,))
        return out

    def mutate(self, doc: Any, times: int = 1) -> tuple[Any, list[str]]:
        """A copy of `doc` with `times` structural changes (replace, delete, add, empty, retype), and what they were."""
        doc = copy.deepcopy(doc)
        done = []
        for _ in range(times):
            path = self.rng.choice(self.paths(doc))
            if not path:
                continue
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            key = path[-1]
            op = self.rng.randrange(5)
            if op == 0 and isinstance(parent, dict):
                del parent[key]
                done.append(f"delete {path}")
            elif op == 1 and isinstance(parent, dict):
                parent[self.text()] = self.value()
                done.append(f"add a key beside {path}")
            elif op == 2 and isinstance(parent[key], (dict, list)):
                parent[key] = type(parent[key])()
                done.append(f"empty {path}")
            elif op == 3 and isinstance(parent[key], list) and parent[key]:
                parent[key] = parent[key] * self.rng.choice([2, 50])
                done.append(f"repeat {path}")
            else:
                parent[key] = self.value()
                done.append(f"{path} = {json.dumps(parent[key])[:60]}")
        return doc, done

    def mutate_bytes(self, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.randrange(1, 6)):
            if not out:
                break
            op, at = self.rng.randrange(6), self.rng.randrange(len(out))
            if op == 0:
                out[at] ^= 1 << self.rng.randrange(8)
            elif op == 1:
                del out[at:at + self.rng.randrange(1, 64)]
            elif op == 2:
                out[at:at] = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 16)))
            elif op == 3:
                out = out[:at]
            elif op == 4:  # a 4-byte field (sizes, lengths, offsets) set to something large
                out[at:at + 4] = self.rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00",
                                                  b"\x00\x00\x00\x00", b"\x00\x00\x40\x00"])
            else:
                chunk = out[at:at + self.rng.randrange(1, 256)]
                out[at:at] = chunk * self.rng.randrange(1, 8)
        return bytes(out)


def counts(quick: int, thorough: int) -> list:
    """The parameters of a fuzz test: `quick` cases always, `thorough` ones under the slow marker."""
    return [pytest.param(quick, id=f"{quick}-cases"),
            pytest.param(thorough, id=f"{thorough}-cases", marks=pytest.mark.slow)]


def skip_unless_asked(request, cases: int, quick: int) -> None:
    """The thorough size runs only when slow tests are selected (`-m slow`): CI's default run stays short."""
    if cases != quick and "slow" not in (request.config.option.markexpr or ""):
        pytest.skip(f"{cases} cases run with `-m slow`")


class Worker:
    """A Python process that runs `module.function(case, setup)` for each case sent (JSON lines), so that a
    case that hangs or exhausts memory is killed after `timeout` seconds and reported, and the rest go on."""

    def __init__(self, target: str, setup: dict, timeout: float, memory_mb: int = 3000):
        self.target, self.setup, self.timeout, self.memory_mb = target, setup, timeout, memory_mb
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
        code = ("import json, resource, sys, importlib; "
                f"resource.setrlimit(resource.RLIMIT_AS, ({self.memory_mb} << 20, {self.memory_mb} << 20)); "
                "module, name = sys.argv[1].split(':'); fn = getattr(importlib.import_module(module), name); "
                "setup = json.loads(sys.argv[2]); print('ready', flush=True)\n"
                "for line in sys.stdin:\n"
                "    print(json.dumps(fn(json.loads(line), setup)), flush=True)")
        self.proc = subprocess.Popen([sys.executable, "-c", code, self.target, json.dumps(self.setup)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        assert self.read(120) == "ready", "the fuzz worker did not start"

    def read(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def run(self, case: Any) -> str:
        """The case's outcome: what the function returned, or "hang" / "crash" when the process had to go."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        line = self.read(self.timeout)
        if line:
            return json.loads(line)
        outcome = "hang" if self.proc.poll() is None else f"crash (exit {self.proc.returncode})"
        self.stop()
        return outcome

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def one_line_error(error: Exception) -> str:
    """How a fuzz case ended in an error the user can act on: the message's first line, flagged if there are more."""
    message = str(error)
    return "error" if "\n" not in message.strip() else f"BUG multi-line {type(error).__name__}: {message[:200]}"
