"""Fuzz: edited manifests of a real tiny engine (fields deleted, retyped, emptied, set to hostile values).
Every one is first read and verified here: the manifest is refused with a one-line ManifestError or passes.
Those that pass are opened as a Pipeline and answer a question about an image, in a worker process with a time
and memory limit (tests/fuzz.py): a one-line error or an answer, never another exception, a hang or a blow-up."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from fuzz import SEED, Fuzzer, Worker, counts, one_line_error, skip_unless_asked
from runtime.errors import AerieError
from runtime.manifest import MANIFEST, verify
from tiny_engines import built_engine

QUICK = 1000


def open_and_ask(case: dict, setup: dict) -> str:
    """In the worker: the manifest as the case says, then a Pipeline answering with an image."""
    from PIL import Image

    from runtime.pipeline import Pipeline
    from runtime.sampling import SamplingParams

    engine = Path(setup["engine"])
    (engine / MANIFEST).write_text(case["text"])
    try:
        pipeline = Pipeline(engine, threads=1, max_batch=1, verify_checksums=False)
        pipeline.run("What colour is the shape?", [Image.new("RGB", (40, 30), (200, 30, 30))],
                     SamplingParams(max_new_tokens=2))
    except AerieError as e:
        return one_line_error(e)
    except Exception as e:
        return f"BUG {type(e).__name__}: {str(e).strip()[:200]}"
    return "ok"


@pytest.mark.parametrize("cases", counts(QUICK, 20_000))
def test_edited_manifests_are_refused_in_one_line_or_run(cases, request, tmp_path_factory, tmp_path):
    skip_unless_asked(request, cases, QUICK)
    engine = tmp_path / "engine"
    shutil.copytree(built_engine("eve", tmp_path_factory)[1], engine)
    original = json.loads((engine / MANIFEST).read_text())
    fuzzer = Fuzzer(SEED)
    runnable, bugs, outcomes = [], [], Counter()
    for _ in range(cases):
        manifest, done = fuzzer.mutate(original, fuzzer.rng.randrange(1, 3))
        text = json.dumps(manifest)
        (engine / MANIFEST).write_text(text)
        try:
            verify(engine, checksums=False)
        except AerieError as e:
            outcome = one_line_error(e)
        except Exception as e:
            outcome = f"BUG {type(e).__name__}: {str(e)[:200]}"
        else:
            outcome = "verified"
            runnable.append({"text": text, "what": done})
        outcomes[outcome.split(" ", 1)[0]] += 1
        if outcome.startswith("BUG"):
            bugs.append((done, outcome))
    worker = Worker("test_fuzz_manifest:open_and_ask", {"engine": str(engine)}, timeout=30)
    try:
        for case in runnable[: max(25, cases // 40)]:
            outcome = worker.run(case)
            outcomes["ran " + outcome.split(" ", 1)[0]] += 1
            if outcome not in ("ok", "error"):
                bugs.append((case["what"], outcome))
        (engine / MANIFEST).write_text(json.dumps(original))
        assert worker.run({"text": json.dumps(original), "what": []}) == "ok", "the engine itself does not run"
    finally:
        worker.stop()
    assert not bugs, "\n".join(sorted({f"{outcome[:160]}  <- {what}" for what, outcome in bugs})[:20])
    assert outcomes["error"] and outcomes["ran ok"], outcomes
