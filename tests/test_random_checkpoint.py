"""bench/random_checkpoint.py writes the published layout: shards + index whose keys and shapes are exactly what
save_model writes for a real model of the same config, in the release's dtype, loadable by build's loader."""

from __future__ import annotations

import json

import pytest
import torch

from bench.random_checkpoint import Preset, is_complete, write_checkpoint
from models.checkpoint import build_model, load_model, read_config, read_state_dict, tied_keys
from models.tiny import tiny_eagle2_5_config, tiny_eagle2_config, tiny_eve_config
from models.tokenizer_build import convert_tokenizer
from runtime.tokenizer import Tokenizer

SHARD_BYTES = 1_500_000

PRESETS = {
    "eve": Preset("tiny EVE", tiny_eve_config(3000), "float16", "llama", 3000),
    # config vocabulary above the tokenizer's, tied embeddings, special tokens after the regular pieces (Qwen2)
    "eagle2_5": Preset("tiny Eagle2.5", tiny_eagle2_5_config(3000, text_config=dict(
        tiny_eagle2_5_config(3000)["text_config"], vocab_size=3072)), "bfloat16", "qwen2", 2800),
    "eagle2": Preset("tiny Eagle2", tiny_eagle2_config(3000), "bfloat16", "qwen2", 2800),  # the decoder in llm_config
}


@pytest.fixture(scope="module", params=list(PRESETS))
def written(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "checkpoint"
    summary = write_checkpoint(PRESETS[request.param], out, shard_bytes=SHARD_BYTES)
    return request.param, out, summary


def test_keys_and_shapes_are_those_save_model_writes(written):
    family, out, summary = written
    model = build_model(read_config(out))
    skip = tied_keys(model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in skip}
    state = read_state_dict(out)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert {v.dtype for v in state.values()} == {getattr(torch, PRESETS[family].dtype)}
    assert summary["parameters"] == sum(v.numel() for v in state.values())
    load_model(out)  # the build's loader names any missing or unexpected key


def test_shards_and_index(written):
    _, out, summary = written
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == summary["shards"] > 1
    assert shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == summary["bytes"]
    for name in shards:
        keys = [k for k, v in index["weight_map"].items() if v == name]
        data = (out / name).stat().st_size
        assert data < SHARD_BYTES + 64 * 1024 or len(keys) == 1  # only a tensor larger than a shard exceeds it
    assert is_complete(out)
    (out / shards[0]).rename(out / "moved")
    assert not is_complete(out)
    (out / "moved").rename(out / shards[0])


def test_values(written):
    _, out, _ = written
    state = {k: v.float() for k, v in read_state_dict(out).items()}
    norms = [k for k in state if k.endswith(("norm.weight", "layernorm.weight", "layer_norm1.weight"))]
    assert norms and all(bool((state[k] == 1).all()) for k in norms)
    biases = [k for k in state if k.endswith(".bias")]
    assert biases and all(bool((state[k] == 0).all()) for k in biases)
    embed = next(v for k, v in state.items() if k.endswith("embed_tokens.weight"))
    assert abs(embed.std().item() - 0.02) < 0.001 and abs(embed.mean().item()) < 0.001


def test_values_do_not_depend_on_the_shard_size(written, tmp_path):
    family, out, _ = written
    whole = write_checkpoint(PRESETS[family], tmp_path / "whole", shard_bytes=10**9)
    assert whole["shards"] == 1
    a, b = read_state_dict(out), read_state_dict(tmp_path / "whole")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer(written, tmp_path):
    family, out, _ = written
    preset, config = PRESETS[family], read_config(out)
    tok = Tokenizer.from_dir(out)
    assert tok.vocab_size == preset.tokenizer_size
    convert_tokenizer(out, tmp_path / "converted")  # build.py's tokenizer step
    if family == "eve":
        assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2) == (tok.token_id("<s>"), tok.token_id("</s>"))
    else:
        text = config.get("llm_config") or config["text_config"]
        assert text["eos_token_id"] == tok.token_id("<|im_end|>") == preset.tokenizer_size - 4
        if family == "eagle2_5":  # Eagle2 finds <IMG_CONTEXT> in the tokenizer, as upstream's chat does
            assert config["image_token_index"] == tok.token_id("<IMG_CONTEXT>") == preset.tokenizer_size - 1
        assert text["vocab_size"] > tok.vocab_size
