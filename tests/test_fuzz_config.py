"""Fuzz: damaged config.json files (structural changes to each family's tiny config and to the demo models',
and damaged bytes) through `read_config`, `detect_family` and the family's model built on the meta device:
each is a one-line CheckpointError or a model, never another exception, a hang or a memory blow-up. Every
case runs in a worker process with a time and memory limit (tests/fuzz.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from fuzz import SEED, Fuzzer, Worker, counts, one_line_error, skip_unless_asked
# Imported here, not in the worker's function: the worker loads this module before it says it is ready, so no
# case's time limit pays for importing torch and transformers.
from models.checkpoint import read_config
from models.registry import detect_family
from models.tiny import (tiny_eagle2_5_config, tiny_eagle2_9b_config, tiny_eagle2_config, tiny_eagle_v1_config,
                             tiny_eve_config, tiny_evev2_config)
from runtime.errors import AerieError

ROOT = Path(__file__).resolve().parents[1]
QUICK = 1000


def seed_configs() -> list[dict]:
    tiny = [tiny_eve_config(320), tiny_evev2_config(320), tiny_eagle2_5_config(320), tiny_eagle2_config(320),
            tiny_eagle2_9b_config(320), tiny_eagle_v1_config(320)]
    return tiny + [json.loads(p.read_text()) for p in sorted((ROOT / "examples").glob("*/config.json"))]


def build_from_config(case: dict, setup: dict) -> str:
    """In the worker: write the case as config.json and build its model on the meta device."""
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


# One case of each kind the fuzzer found, with the field the error must name: (seed config, path, value, message).
FOUND = [
    # transformers' own type checks, once a StrictDataclassFieldValidationError traceback
    ("eve", ("attention_bias",), "NaN", r"attention_bias.*expected bool"),
    # wrong types that broke inside the builders (TypeError, AttributeError, ValueError, KeyError)
    ("eve", ("mm_hidden_size",), {}, r"mm_hidden_size is \{\}; it must be an integer from 1 to 131072"),
    ("eagle2_5", ("vision_config",), 1.0, r"vision_config is 1.0; it must be an object"),
    ("eagle2_5", ("text_config", "id2label"), {"x": "a"}, r"text_config.id2label\['x'\]"),
    ("eagle_v1", ("vision_experts", "convnext", "<s>"), 1, r"vision_experts.convnext.<s> is 1; it must be left out"),
    ("eagle_v1", ("mm_vision_tower",), 10**12, r"mm_vision_tower is 1000000000000; it must be a string"),
    ("eve", ("rope_parameters",), {"rope_type": -0.0}, r"rope_parameters.rope_type is -0.0; it must be one of"),
    ("eve", ("rope_parameters",), {"rope_type": "llama3"}, r"rope_parameters.factor is missing"),
    ("eagle2_5", ("text_config", "num_attention_heads"), 256, r"text_config.hidden_size is 128; it must be a multiple"),
    # a dtype that is no torch dtype: getattr(torch, ...) once raised AttributeError
    ("eve", ("dtype",), "../../etc/passwd", r"dtype is '../../etc/passwd'; it must be one of float32"),
    # sizes that built (or looped building) millions of modules
    ("eve", ("num_hidden_layers",), 10**5, r"num_hidden_layers is 100000; it must be an integer from 1 to 256"),
    ("eagle2_5", ("text_config", "vocab_size"), 2**40, r"text_config.vocab_size .* from 1 to 2097152"),
    ("eve", ("mm_projector_type",), "mlp100000x_gelu", r"mm_projector_type .* with N from 1 to 9"),
    ("eagle_v1", ("vision_experts", "convnext", "depths"), [1, 1, 10**5, 1], r"convnext.depths\[2\] .* from 1 to 256"),
    ("eagle_v1", ("vision_experts", "pix2struct", "max_patches"), 10**9, r"pix2struct.max_patches .* from 1 to 16384"),
    # Eagle2: its vision_config (SigLIP's, or the 9B tower mixture's) and template once went unchecked
    ("eagle2", ("vision_config",), "</s>", r"vision_config is '</s>'; it must be an object"),
    ("eagle2_9b", ("vision_config", "convnext_config", "depths"), [1, 2**63 - 1], r"convnext_config.depths\[1\] .* 1 to 256"),
    ("eagle2_9b", ("vision_config", "convnext_config", "dims"), [8, 1.5], r"convnext_config.dims\[1\] is 1.5"),
    ("eagle2_9b", ("vision_config", "mm_vision_select_layer"), {}, r"mm_vision_select_layer is \{\}"),
    ("eagle2", ("template",), ["qwen2-chat"], r"template is \['qwen2-chat'\]; it must be a string"),
]


@pytest.mark.parametrize("seed, path, value, message", FOUND, ids=[".".join(case[1]) for case in FOUND])
def test_each_kind_of_damage_found_is_a_one_line_checkpoint_error(seed, path, value, message, tmp_path):
    from models.checkpoint import build_model

    config = {"eve": tiny_eve_config, "eagle2_5": tiny_eagle2_5_config, "eagle_v1": tiny_eagle_v1_config,
              "eagle2": tiny_eagle2_config, "eagle2_9b": tiny_eagle2_9b_config}[seed](320)
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AerieError, match=message) as raised, torch.device("meta"):
        build_model(read_config(tmp_path), where="my/config.json")
    assert "\n" not in str(raised.value) and str(raised.value).startswith("my/config.json: ")


def test_a_config_objects_own_dict_builds():
    """A model's `config.to_dict()` (id2label with integer keys, as the FSDP trainer rebuilds it) passes the checks."""
    from models.checkpoint import build_model

    with torch.device("meta"):
        model = build_model(tiny_eve_config(320))
        config = model.config.to_dict()
        assert any(type(key) is int for key in config["id2label"])
        build_model(config)
