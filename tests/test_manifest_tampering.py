"""An engine directory tampered with after the build, on a copy of a real tiny engine: every file the runtime
opens is protected (an entry deleted from the manifest doesn't unprotect a file), paths stay inside the
directory, and a manifest with a missing or mistyped field, or one that doesn't match its decoder graph, is a
one-line ManifestError before anything is allocated."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from runtime.errors import ManifestError
from runtime.manifest import MANIFEST, verify
from runtime.pipeline import Pipeline
from tiny_engines import built_engine


@pytest.fixture
def engine(tmp_path_factory, tmp_path) -> Path:
    copy = tmp_path / "engine"
    shutil.copytree(built_engine("eve", tmp_path_factory)[1], copy)
    return copy


def edit(engine: Path, change) -> None:
    path = engine / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def tamper(path: Path) -> None:
    """Change a byte, keeping the size."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def refused(engine: Path, match: str) -> str:
    with pytest.raises(ManifestError, match=match) as info:
        Pipeline(engine, threads=1)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_deleted_entry_does_not_unprotect_a_file(engine):
    """The attack: tamper with the vision model, then delete its entry (the old runtime checked only listed files)."""
    tamper(engine / "vision" / "model.onnx")

    def forget(data):
        del data["files"]["vision/model.onnx"]
        data["parts"]["vision"]["files"] = []

    edit(engine, forget)
    refused(engine, r"vision/model\.onnx: in the engine directory but not in its manifest")


def test_an_empty_file_list_protects_nothing_so_it_is_refused(engine):
    edit(engine, lambda data: data.update(files={}))
    refused(engine, "not in its manifest")


def test_a_file_added_to_the_directory_is_refused(engine):
    (engine / "decoder" / "model.onnx.data.extra").write_bytes(b"weights")
    refused(engine, r"model\.onnx\.data\.extra: in the engine directory but not in its manifest")


def test_the_triton_repository_is_not_part_of_the_engine(engine):
    (engine / "triton" / "aerie").mkdir(parents=True)
    (engine / "triton" / "aerie" / "config.pbtxt").write_text('name: "aerie"\n')
    verify(engine)


@pytest.mark.parametrize("change", [
    lambda d: d["files"].update({"../../etc/hostname": {"sha256": "0" * 64, "bytes": 1}}),
    lambda d: d["parts"]["vision"].update(model="/etc/hostname"),
    lambda d: d["parts"]["decoder"].update(embed_tokens="../engine/embed_tokens.npy"),
    lambda d: d["parts"]["decoder"]["files"].append("decoder/../../outside"),
    lambda d: d.update(tokenizer="/etc"),
], ids=["files", "vision model", "embed tokens", "part files", "tokenizer"])
def test_paths_must_stay_inside_the_engine_directory(engine, change):
    edit(engine, change)
    refused(engine, "relative path inside the engine directory")


def test_a_symbolic_link_out_of_the_directory_is_refused(engine, tmp_path):
    config = engine / "tokenizer" / "tokenizer_config.json"
    outside = tmp_path / "elsewhere.json"
    shutil.copy(config, outside)
    config.unlink()
    os.symlink(outside, config)
    refused(engine, "leads outside the engine directory")


@pytest.mark.parametrize("change, match", [
    (lambda d: d["image_tokens"].pop("first_id"), r"image_tokens lacks 'first_id'"),
    (lambda d: d["parts"]["decoder"].pop("max_length"), r"parts\.decoder lacks 'max_length'"),
    (lambda d: d["parts"]["decoder"].update(num_layers="4"), r"parts\.decoder\.num_layers must be an integer"),
    (lambda d: d["parts"]["decoder"].update(io={"logits": "logits"}), r"parts\.decoder\.io must be an object"),
    (lambda d: d["parts"]["decoder"]["io"].update(past_key="{0}"), r"parts\.decoder\.io must be"),
    (lambda d: d["parts"].update(decoder=[]), r"part 'decoder' lacks"),
    (lambda d: d["files"]["embed_tokens.npy"].pop("sha256"), r"files\['embed_tokens\.npy'\] lacks 'sha256'"),
    (lambda d: d["files"]["embed_tokens.npy"].update(bytes=-1), r"bytes must be an integer >= 0"),
    (lambda d: d.update(chat_template="nope"), r"chat_template must be one of"),
    (lambda d: d["special_ids"].update(stop="2"), r"special_ids\.stop must be a list of ids"),
    (lambda d: d.update(image_tokens=5), r"image_tokens must be an object"),
    (lambda d: d.update(pending="none"), r"pending must be a list of strings"),
])
def test_missing_or_mistyped_fields_are_one_line_errors(engine, change, match):
    edit(engine, change)
    refused(engine, match)


@pytest.mark.parametrize("change, match", [
    (lambda d: d["parts"]["decoder"].update(max_length=10**12), r"the graph holds 2048 positions, not max_length"),
    (lambda d: d["parts"]["decoder"].update(max_length=4096), r"the graph holds 2048 positions"),
    (lambda d: d["parts"]["decoder"].update(num_layers=1), r"an input 'past_key_values\.1\.key' the manifest does"),
    (lambda d: d["parts"]["decoder"].update(num_layers=3), r"no input or output 'past_key_values\.2\.key'"),
    (lambda d: d["parts"]["decoder"].update(num_layers=10**9), r"too few for 1000000000 layers"),
    (lambda d: d["parts"]["decoder"].update(num_kv_heads=8), r"past_key_values\.0\.key' has shape"),
    (lambda d: d["parts"]["decoder"]["io"].update(logits="scores"), r"has no input or output 'scores'"),
])
def test_a_decoder_part_that_does_not_match_its_graph_is_refused(engine, change, match):
    """max_length 1e12 made the old runtime try to allocate 1.82 PiB of KV cache."""
    edit(engine, change)
    refused(engine, match)


def test_a_smaller_context_is_still_allowed(engine):
    edit(engine, lambda d: d["parts"]["decoder"].update(max_length=512))
    assert Pipeline(engine, threads=1).decoder.max_length == 512
