"""Checkpoint directories under the published key names: load, save, shards, pickle, and precise errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import build_model, load_model, read_config, read_state_dict, save_model, tied_keys
from models.tiny import tiny_eagle2_5_config
from runtime.errors import CheckpointError

EVE_KEYS = {
    "model.vision_tower.patch_embedding.weight": (128, 3, 14, 14),
    "model.vision_tower.class_embedding": (128,),
    "model.vision_tower.split_embedding": (128,),
    "model.vision_tower.local_attention.q.0.weight": (128,),
    "model.vision_tower.local_attention.q.1.weight": (128, 128),
    "model.vision_tower.local_attention.kv.1.weight": (256, 128),
    "model.vision_tower.local_attention.proj.bias": (128,),
    "model.vision_tower.global_attention.kv.0.bias": (128,),
    "model.mm_projector.0.weight": (128, 128),
    "model.mm_projector.2.bias": (128,),
    "model.embed_tokens.weight": None,
    "model.layers.0.self_attn.q_proj.weight": (128, 128),
    "model.layers.1.mlp.down_proj.weight": (128, 256),
    "model.norm.weight": (128,),
    "lm_head.weight": None,
}
EAGLE_KEYS = {
    "vision_model.vision_model.embeddings.patch_embedding.weight": (128, 3, 14, 14),
    "vision_model.vision_model.embeddings.position_embedding.weight": (16, 128),
    "vision_model.vision_model.encoder.layers.0.self_attn.q_proj.weight": (128, 128),
    "vision_model.vision_model.encoder.layers.1.mlp.fc2.weight": (128, 256),
    "vision_model.vision_model.post_layernorm.weight": (128,),
    "mlp1.0.weight": (512,),
    "mlp1.1.weight": (128, 512),
    "mlp1.3.weight": (128, 128),
    "language_model.model.embed_tokens.weight": None,
    "language_model.model.layers.0.self_attn.q_proj.bias": (128,),
    "language_model.model.norm.weight": (128,),
}


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def assert_loaded_as_saved(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Every tensor the checkpoint holds is the model's, value for value; every model key comes from it (a tied
    lm_head shares the token table's)."""
    state = model.state_dict()
    tied = tied_keys(model)
    assert set(state) - tied == set(saved), (set(state) ^ set(saved)) - tied
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_eve_published_key_names(tiny_eve_dir):
    saved = load_file(str(tiny_eve_dir / "model.safetensors"))
    for key, shape in EVE_KEYS.items():
        assert key in saved, key
        if shape:
            assert tuple(saved[key].shape) == shape, key
    assert not any(k.startswith(("model.vision_clip.", "model.vision_tower_compressor.")) for k in saved)
    config = json.loads((tiny_eve_dir / "config.json").read_text())
    assert config["model_type"] == "eve" and config["architectures"] == ["EVELlamaForCausalLM"]
    model = load_model(tiny_eve_dir)
    assert not model.training
    assert_loaded_as_saved(model, saved)


def test_eagle2_5_published_key_names_with_tied_head(tiny_eagle25_dir):
    saved = load_file(str(tiny_eagle25_dir / "model.safetensors"))
    for key, shape in EAGLE_KEYS.items():
        assert key in saved, key
        if shape:
            assert tuple(saved[key].shape) == shape, key
    # The tiny config ties lm_head to the embeddings, as Qwen2's small models do: the head is not stored.
    assert "language_model.lm_head.weight" not in saved
    model = load_model(tiny_eagle25_dir)
    head, embed = model.language_model.lm_head.weight, model.language_model.model.embed_tokens.weight
    assert head.data_ptr() == embed.data_ptr()
    assert_loaded_as_saved(model, saved)


def test_eagle2_5_untied_head_is_stored_and_loaded(tmp_path):
    config = tiny_eagle2_5_config(300)
    config["text_config"]["tie_word_embeddings"] = False
    torch.manual_seed(0)
    model = build_model(config)
    save_model(model, tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "language_model.lm_head.weight" in saved
    loaded = load_model(tmp_path)
    assert not torch.equal(loaded.language_model.lm_head.weight, loaded.language_model.model.embed_tokens.weight)
    assert_same_weights(model, loaded)


def test_sharded_save_and_load(tmp_path, tiny_eve_dir):
    model = load_model(tiny_eve_dir)
    save_model(model, tmp_path, max_shard_bytes=200_000)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert_same_weights(model, load_model(tmp_path))
    # Saving again as one file removes the stale shards and index.
    save_model(model, tmp_path)
    assert not list(tmp_path.glob("model-*.safetensors")) and not (tmp_path / "model.safetensors.index.json").exists()
    assert_same_weights(model, load_model(tmp_path))


def test_missing_key_is_named(tmp_path, tiny_eve_dir):
    ckpt = copy_checkpoint(tiny_eve_dir, tmp_path / "ckpt")
    state = load_file(str(ckpt / "model.safetensors"))
    del state["model.mm_projector.0.weight"]
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing model\.mm_projector\.0\.weight$"):
        load_model(ckpt)


def test_unexpected_key_is_named(tmp_path, tiny_eagle25_dir):
    ckpt = copy_checkpoint(tiny_eagle25_dir, tmp_path / "ckpt")
    state = load_file(str(ckpt / "model.safetensors"))
    state["mlp1.4.weight"] = torch.zeros(2)
    del state["mlp1.3.bias"]
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_model(ckpt)
    message = str(info.value)
    assert "missing mlp1.3.bias; unexpected mlp1.4.weight" in message and "eagle2_5" in message


def test_many_missing_keys_are_summarised(tmp_path, tiny_eve_dir):
    ckpt = copy_checkpoint(tiny_eve_dir, tmp_path / "ckpt")
    state = {k: v for k, v in load_file(str(ckpt / "model.safetensors")).items() if not k.startswith("model.layers.")}
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing model\.layers\.0\..* \.\.\. \(18 in all\)"):
        load_model(ckpt)


def test_missing_shard_is_named(tmp_path, tiny_eve_dir):
    ckpt = tmp_path / "ckpt"
    save_model(load_model(tiny_eve_dir), ckpt, max_shard_bytes=200_000)
    victim = sorted(ckpt.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"{victim.name}: a weight shard named by the index is missing"):
        load_model(ckpt)


def test_index_naming_a_tensor_its_shard_lacks(tmp_path, tiny_eve_dir):
    ckpt = tmp_path / "ckpt"
    save_model(load_model(tiny_eve_dir), ckpt, max_shard_bytes=200_000)
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.extra.weight"] = next(iter(index["weight_map"].values()))
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"1 tensors listed but not in their shard, e\.g\. model\.extra\.weight"):
        read_state_dict(ckpt)


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(CheckpointError, match="unknown model_type 'llava'; Aerie builds .*eagle_2_5_vl.*eve"):
        load_model(tmp_path)


def test_no_weights_and_no_config(tmp_path, tiny_eve_dir):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(tiny_eve_dir / "config.json", ckpt)
    with pytest.raises(CheckpointError, match="no weights found; expected model.safetensors"):
        load_model(ckpt)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "nowhere")
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_model(ckpt)


@pytest.mark.parametrize("data, message", [
    (b'{"model_type": "eve\xed\xa0\x80"}', r"not UTF-8 text \(byte 19\)"),
    (b"[1, 2]", "holds a JSON list, not an object of fields"),
    (b'"eve"', "holds a JSON str, not an object of fields"),
    (b"null", "holds a JSON NoneType, not an object of fields"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_config_json_that_is_not_a_json_object_in_utf8(tmp_path, data, message):
    (tmp_path / "config.json").write_bytes(data)
    with pytest.raises(CheckpointError, match=message):
        read_config(tmp_path)


def test_damaged_weights_file(tmp_path, tiny_eve_dir):
    ckpt = copy_checkpoint(tiny_eve_dir, tmp_path / "ckpt")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read the weights"):
        load_model(ckpt)


def test_eve_training_only_keys_ignored_at_inference(tmp_path, tiny_eve_dir):
    """A training checkpoint holds the CLIP teacher and the patch aligner; inference ignores them,
    training needs them."""
    torch.manual_seed(0)
    config = json.loads((tiny_eve_dir / "config.json").read_text())
    trainer = build_model(config, training=True)
    ckpt = tmp_path / "ckpt"
    save_model(trainer, ckpt)
    saved = load_file(str(ckpt / "model.safetensors"))
    assert "model.vision_clip.backbone.vision_model.embeddings.patch_embedding.weight" in saved
    assert "model.vision_tower_compressor.input_layer.weight" in saved
    assert any(k.startswith("model.vision_tower_compressor.norm_layer.0.1.") for k in saved)
    inference = load_model(ckpt)
    assert not hasattr(inference.model, "vision_clip") and not hasattr(inference.model, "vision_tower_compressor")
    assert torch.equal(inference.model.vision_tower.patch_embedding.weight, trainer.model.vision_tower.patch_embedding.weight)
    assert load_model(ckpt, training=True).training
    # An inference checkpoint lacks them: training says which are missing.
    with pytest.raises(CheckpointError, match=r"missing model\.vision_clip\."):
        load_model(tiny_eve_dir, training=True)


def test_eagle2_5_pooling_head_keys_ignored(tmp_path, tiny_eagle25_dir):
    ckpt = copy_checkpoint(tiny_eagle25_dir, tmp_path / "ckpt")
    state = load_file(str(ckpt / "model.safetensors"))
    state["vision_model.vision_model.head.probe"] = torch.zeros(1, 1, 128)
    save_file(state, str(ckpt / "model.safetensors"))
    load_model(ckpt)
    assert load_model(ckpt, training=True).training  # fine-tuning a published checkpoint skips them too


class Marker:
    """A pickle payload that would create a file when unpickled without weights_only."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickle_checkpoints_load_with_weights_only(tmp_path, tiny_eve_dir):
    model = load_model(tiny_eve_dir)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(tiny_eve_dir / "config.json", ckpt)
    torch.save(model.state_dict(), ckpt / "pytorch_model.bin")
    assert_same_weights(model, load_model(ckpt))
    # Sharded pickles with pytorch_model.bin.index.json, as older checkpoints ship them.
    (ckpt / "pytorch_model.bin").unlink()
    state = model.state_dict()
    keys = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, names in halves.items():
        torch.save({k: state[k] for k in names}, ckpt / name)
    weight_map = {k: name for name, names in halves.items() for k in names}
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same_weights(model, load_model(ckpt))


def test_pickle_with_code_is_refused_without_running_it(tmp_path, tiny_eve_dir):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(tiny_eve_dir / "config.json", ckpt)
    marker = tmp_path / "pwned"
    torch.save({"model.norm.weight": torch.ones(128), "payload": Marker(marker)}, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot read the weights: the pickle holds more") as info:
        load_model(ckpt)
    assert not marker.exists()
    assert "\n" not in str(info.value) and "weights_only=True only" in str(info.value)
    (ckpt / "pytorch_model.bin").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot read the weights .*damaged") as info:
        load_model(ckpt)
    assert "\n" not in str(info.value)


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_weights_are_the_checkpoints_own_tensors_not_copies(tmp_path):
    """A float16 checkpoint loads in float16 (no float32 copy) and memory-mapped: building and loading a model
    with 100 MB of weights adds almost nothing resident until its weights are read; `dtype` converts."""
    config = tiny_eagle2_5_config(4096)
    config["text_config"].update(hidden_size=1024, intermediate_size=4096, num_hidden_layers=6, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = build_model(config).half()
    save_model(model, tmp_path)
    del model
    size_mb = (tmp_path / "model.safetensors").stat().st_size / 1e6
    assert size_mb > 100
    before = resident_mb()
    loaded = load_model(tmp_path)
    grown = resident_mb() - before
    assert {p.dtype for p in loaded.parameters()} == {torch.float16}
    assert grown < 0.2 * size_mb, f"loading took {grown:.0f} MB resident for {size_mb:.0f} MB of weights"
    assert_loaded_as_saved(loaded, load_file(str(tmp_path / "model.safetensors")))
    as_float = load_model(tmp_path, dtype=torch.float32)
    assert {p.dtype for p in as_float.parameters()} == {torch.float32}
    torch.testing.assert_close(as_float.language_model.lm_head.weight, loaded.language_model.lm_head.weight.float())


def test_a_shard_outside_the_checkpoint_is_refused(tmp_path, tiny_eve_dir):
    """An index naming a file outside its directory (a relative climb or an absolute path) is never opened."""
    ckpt = tmp_path / "ckpt"
    save_model(load_model(tiny_eve_dir), ckpt, max_shard_bytes=200_000)
    secret = tmp_path / "secret.safetensors"
    save_file({"x": torch.zeros(1)}, str(secret))
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for outside in ("../secret.safetensors", str(secret)):
        index["weight_map"]["model.norm.weight"] = outside
        index_path.write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match="lies outside the checkpoint directory"):
            load_model(ckpt)
