"""bench/real_size.py reads build.py's step lines as build.py prints them (runtime.eval.progress.Steps)."""

from __future__ import annotations

import contextlib
import io

import pytest

from bench.real_size import parse_steps
from runtime.eval.progress import Steps


def test_parse_steps_of_build_output():
    steps = Steps()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with steps("tokenizer") as info:
            info("tokenizer.json")
        with steps("export decoder") as info:  # one space between a 14-character name and its details
            info("537.0 MB, 12 layers, context 2048")
        with steps("write"):  # no details
            pass
        with pytest.raises(ValueError), steps("self-check"):
            raise ValueError("differs")
    parsed = parse_steps(out.getvalue().splitlines())
    assert [(s["step"], s["details"]) for s in parsed] == [
        ("tokenizer", "tokenizer.json"), ("export decoder", "537.0 MB, 12 layers, context 2048"), ("write", ""),
        ("self-check", "failed after")]
    assert all(s["seconds"] >= 0 for s in parsed)
