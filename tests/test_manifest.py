"""The engine manifest: written last with every file's sha256; verify names the file that is missing or
differs; a manifest of another schema version or a damaged manifest is refused with what to do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runtime.errors import ManifestError
from runtime.manifest import (DECODER_IO, MANIFEST, SCHEMA_VERSION, Manifest, digest_files, read_manifest, verify,
                              write_manifest)
from runtime.preprocess import PreprocessSpec


def make_engine(directory):
    (directory / "vision").mkdir(parents=True)
    (directory / "vision" / "model.onnx").write_bytes(b"vision graph" * 100)
    (directory / "tokenizer").mkdir()
    (directory / "tokenizer" / "tokenizer.json").write_text("{}")
    (directory / "embed_tokens.npy").write_bytes(b"\x00" * 4096)
    manifest = Manifest(
        family="eve",
        source={"path": "ckpt", "digest": "sha256:0"},
        parts={
            "vision": {"backend": "ort", "dtype": "float32", "quantization": None, "files": ["vision/model.onnx"],
                       "model": "vision/model.onnx"},
            "decoder": {"backend": "ort", "dtype": "float32", "quantization": None, "files": ["embed_tokens.npy"],
                        "model": "embed_tokens.npy", "embed_tokens": "embed_tokens.npy", "vocab_size": 320,
                        "hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 32,
                        "max_length": 256, "io": dict.fromkeys(DECODER_IO, "x")},
        },
        preprocess=PreprocessSpec(kind="eve_anyres", image_size=112, image_size_clip=56).to_dict(),
        image_tokens={"first_id": 320, "hidden_size": 128, "image_start": "", "image_end": "", "max_per_image": 21},
        chat_template="vicuna_v1",
        special_ids={"bos": 1, "eos": 2, "pad": 0, "stop": [2]},
        build={"flags": {"dtype": "fp32"}},
    )
    write_manifest(directory, manifest)
    return manifest


def test_round_trip(tmp_path):
    written = make_engine(tmp_path)
    assert set(written.files) == {"vision/model.onnx", "tokenizer/tokenizer.json", "embed_tokens.npy"}
    read = verify(tmp_path)
    assert read == written
    assert read.preprocess_spec() == PreprocessSpec(kind="eve_anyres", image_size=112, image_size_clip=56)
    assert json.loads((tmp_path / MANIFEST).read_text())["schema_version"] == SCHEMA_VERSION


def test_corrupt_file_is_named(tmp_path):
    make_engine(tmp_path)
    path = tmp_path / "vision" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[50] ^= 0xFF  # same size: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"vision/model\.onnx: sha256 differs.*rebuild"):
        verify(tmp_path)
    verify(tmp_path, checksums=False)  # the quick check sees the same size


def test_truncated_and_missing_files_are_named(tmp_path):
    make_engine(tmp_path)
    (tmp_path / "embed_tokens.npy").write_bytes(b"\x00" * 10)
    with pytest.raises(ManifestError, match=r"embed_tokens\.npy: 10 bytes, the manifest says 4096"):
        verify(tmp_path, checksums=False)
    (tmp_path / "embed_tokens.npy").write_bytes(b"\x00" * 4096)
    (tmp_path / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ManifestError, match=r"tokenizer/tokenizer\.json: missing"):
        verify(tmp_path)


@pytest.mark.parametrize("version,hint", [(SCHEMA_VERSION + 1, "upgrade Aerie"), (0, "rebuild"), (None, "rebuild")])
def test_other_schema_version_is_refused(tmp_path, version, hint):
    make_engine(tmp_path)
    data = json.loads((tmp_path / MANIFEST).read_text())
    data["schema_version"] = version
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=f"schema version {version!r}.*{hint}"):
        verify(tmp_path)


def test_damaged_manifest(tmp_path):
    make_engine(tmp_path)
    data = json.loads((tmp_path / MANIFEST).read_text())
    del data["parts"]
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="missing parts"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(ManifestError, match="not a finished engine directory"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no such engine directory"):
        read_manifest(tmp_path / "absent")


def test_part_files_must_exist_when_written(tmp_path):
    manifest = make_engine(tmp_path)
    manifest.parts["decoder"]["files"].append("decoder/model.onnx")
    with pytest.raises(ManifestError, match="decoder part names decoder/model.onnx"):
        write_manifest(tmp_path, manifest)


def test_digest_depends_on_names_and_contents(tmp_path):
    (tmp_path / "a").write_text("1")
    (tmp_path / "b").write_text("2")
    first = digest_files(tmp_path, ["a", "b"])
    assert first == digest_files(tmp_path, ["b", "a"])
    (tmp_path / "b").write_text("3")
    assert digest_files(tmp_path, ["a", "b"]) != first


def test_manifest_module_imports_no_torch():
    code = "import sys, runtime.manifest; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
