"""Shared fixtures: tiny checkpoints of each family (real module trees and key names, small widths),
built once per test session from a seeded random init and an offline tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = [
    "What colour is the shape? red green blue yellow purple orange black white",
    "How many shapes are there? one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
    "Which bar is the highest? What is the invoice number? circle square triangle star",
    "Answer the question using a single word or phrase. The image shows a small text on a large canvas.",
]


def make_tiny_checkpoint(directory: Path, family: str, seed: int = 0, padded_vocab: int = 0, **overrides) -> Path:
    """Write a tiny random checkpoint of `family` ("eve", "evev2", "eagle2", "eagle2_5" or "eagle_v1") with its
    tokenizer into `directory`; `padded_vocab` rows past the tokenizer's, as Qwen2 and padded Llama checkpoints have;
    `overrides` replace config fields."""
    import torch

    from models.checkpoint import build_model, save_model
    from models.tiny import (tiny_eagle2_5_config, tiny_eagle2_config, tiny_eagle_v1_config, tiny_eve_config,
                             tiny_evev2_config)
    from models.tokenizer_build import save_tokenizer, tokenizer_config, train_tiny_tokenizer

    style = "qwen2" if family in ("eagle2", "eagle2_5", "evev2") else "llama"
    tok = train_tiny_tokenizer(CORPUS, style, vocab_size=320)
    save_tokenizer(tok, tokenizer_config(style), directory)
    vocab = tok.get_vocab_size() + padded_vocab
    if family == "eve":
        config = tiny_eve_config(vocab)
    elif family == "eagle_v1":
        config = tiny_eagle_v1_config(vocab)
    elif family == "evev2":
        config = tiny_evev2_config(vocab, eos_token_id=tok.token_to_id("<|im_end|>"))
    elif family == "eagle2":
        config = tiny_eagle2_config(vocab, eos_token_id=tok.token_to_id("<|im_end|>"))
    else:
        config = tiny_eagle2_5_config(vocab, eos_token_id=tok.token_to_id("<|im_end|>"))
    torch.manual_seed(seed)
    save_model(build_model({**config, **overrides}).eval(), directory)
    return directory


@pytest.fixture(scope="session")
def tiny_eve_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_eve"), "eve")


@pytest.fixture(scope="session")
def tiny_eagle25_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_eagle25"), "eagle2_5")


@pytest.fixture(scope="session")
def tiny_evev2_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_evev2"), "evev2")


@pytest.fixture(scope="session", params=["eve", "eagle2_5"])
def tiny_checkpoint(request, tmp_path_factory) -> Path:
    """Each family's tiny checkpoint in turn."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny_{request.param}"), request.param)


@pytest.fixture(scope="session", params=["eve", "eagle2_5", "evev2"])
def tiny_ort_checkpoint(request, tmp_path_factory) -> Path:
    """Each tiny checkpoint the ONNX Runtime path builds, EVEv2's too (it has no TensorRT-LLM form)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny_ort_{request.param}"), request.param)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need an NVIDIA GPU: without one they are skipped, with the reason in the summary."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: torch.cuda.is_available() is False on this machine")
    for item in gpu_items:
        item.add_marker(skip)
