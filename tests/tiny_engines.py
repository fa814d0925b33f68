"""Tiny engines built once per test session by build.py itself (self-check included), shared by
test_build, test_pipeline and test_cli: a build takes seconds, the tests that use it milliseconds."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from PIL import Image

from conftest import make_tiny_checkpoint

FAMILIES = ("eve", "eagle2", "eagle2_5", "eagle_v1", "evev2")
_BUILT: dict[str, tuple[Path, Path, str]] = {}


def run_build(argv: list[str]) -> tuple[int, str, str]:
    """build.py's main in this process: (exit code, stdout, stderr)."""
    from engines import build

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = build.main(argv)
    return code, out.getvalue(), err.getvalue()


def built_engine(family: str, tmp_path_factory) -> tuple[Path, Path, str]:
    """(checkpoint, engine directory, build output) for `family`, built on first use."""
    if family not in _BUILT:
        checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp(f"ckpt_{family}"), family)
        engine = tmp_path_factory.mktemp(f"engine_{family}") / "engine"
        code, out, err = run_build([str(checkpoint), "--out", str(engine), "--self-check-tokens", "8"])
        assert code == 0, out + err
        _BUILT[family] = checkpoint, engine, out
    return _BUILT[family]


def synthetic_test_split(n: int) -> list[tuple[str, list[Image.Image]]]:
    """The first `n` questions of the synthetic benchmark's test split (runtime/eval/synthetic.py, every category)."""
    from runtime.eval.synthetic import CATEGORIES, TRAIN_MIX, make_sample, split_categories

    categories = split_categories("test", n, 0, TRAIN_MIX)
    assert set(categories) == set(CATEGORIES[:n])
    samples = [make_sample(0, "test", i, category) for i, category in enumerate(categories)]
    return [(sample.question, [sample.image]) for sample in samples]
