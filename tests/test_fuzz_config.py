"""Fuzz: damaged config.json files (structural changes to each family's tiny config and to the demo models',
and damaged bytes) through `read_config`, `detect_family` and the family's model built on the meta device:
each is a one-line CheckpointError or a model, never another exception, a hang or a memory blow-up. Every
case runs in a worker process with a time and memory limit (tests/fuzz.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fuzz import SEED, Fuzzer, Worker, counts, one_line_error, skip_unless_asked

ROOT = Path(__file__).resolve().parents[1]
QUICK = 60


def seed_configs() -> list[dict]:
    from models.tiny import tiny_eagle2_5_config, tiny_eagle_v1_config, tiny_eve_config

    tiny = [tiny_eve_config(320), tiny_eagle2_5_config(320), tiny_eagle_v1_config(320)]
    return tiny + [json.loads(p.read_text()) for p in sorted((ROOT / "examples").glob("*/config.json"))]


def build_from_config(case: dict, setup: dict) -> str:
    """In the worker: write the case as config.json and build its model on the meta device."""
    import torch

    from models.checkpoint import read_config
    from models.registry import detect_family
    from runtime.errors import AerieError

    directory = Path(setup["directory"])
    (directory / "config.json").write_bytes(case["text"].encode("utf-8", "surrogatepass"))
    try:
        config = read_config(directory)
        family = detect_family(config)
        with torch.device("meta"):
            family.build(config, False)
    except AerieError as e:
        return one_line_error(e)
    except Exception as e:
        return f"BUG {type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
    return "ok"


def config_cases(fuzzer: Fuzzer, n: int) -> list[dict]:
    seeds = seed_configs()
    cases = []
    for _ in range(n):
        config, done = fuzzer.mutate(fuzzer.rng.choice(seeds), fuzzer.rng.randrange(1, 4))
        text = json.dumps(config)
        if fuzzer.chance(0.1):
            text = fuzzer.mutate_bytes(text.encode()).decode("utf-8", "surrogateescape")
            done.append("damaged bytes")
        cases.append({"text": text, "what": done})
    return cases


@pytest.mark.xfail(strict=True, reason="models/ raises other exceptions than CheckpointError for damaged config.json "
                                       "files (reported; model loading is being rewritten): see the assertion")
@pytest.mark.parametrize("cases", counts(QUICK, 5000))
def test_damaged_config_json_is_a_one_line_error(cases, request, tmp_path):
    skip_unless_asked(request, cases, QUICK)
    worker = Worker("test_fuzz_config:build_from_config", {"directory": str(tmp_path)}, timeout=5)
    bugs: Counter = Counter()
    examples: dict[str, list] = {}
    outcomes: Counter = Counter()
    try:
        for case in config_cases(Fuzzer(SEED), cases):
            outcome = worker.run(case)
            outcomes[outcome.split(" ", 1)[0]] += 1
            if outcome not in ("ok", "error"):
                kind = outcome.split(":", 1)[0]
                bugs[kind] += 1
                examples.setdefault(kind, case["what"])
    finally:
        worker.stop()
    assert outcomes["ok"] and outcomes["error"], outcomes
    assert not bugs, f"{dict(bugs)}; e.g. {examples}"
