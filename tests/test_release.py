"""`python -m training.release`: an existing release is not overwritten without --force, is replaced as a whole
with it (no stale model card beside new weights), a failed release leaves the old one as it was, and the files
get ordinary permissions. Released from the committed examples/eve-tiny (its linears are multiples of 128)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from training.release import main

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "examples" / "eve-tiny"


def release(target: Path, *extra: str, capsys) -> tuple[int, str]:
    code = main(["--from", str(SOURCE), "--to", str(target), *extra])
    return code, capsys.readouterr().err


def old_release(target: Path) -> Path:
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"other weights")
    (target / "README.md").write_text("# a model card for other weights\n")
    return target


def test_an_existing_release_needs_force(tmp_path, capsys):
    target = old_release(tmp_path / "eve-tiny")
    code, err = release(target, capsys=capsys)
    assert code == 2 and "already exists; pass --force" in err and "\n" not in err.strip()
    assert (target / "model.safetensors").read_bytes() == b"other weights" and (target / "README.md").is_file()


def test_force_replaces_the_whole_directory_with_ordinary_permissions(tmp_path, capsys):
    target = old_release(tmp_path / "eve-tiny")
    code, err = release(target, "--force", capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                        "tokenizer_config.json"], "the old model card was left"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    for path in target.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path  # safetensors writes 0600
    assert [p.name for p in tmp_path.iterdir()] == ["eve-tiny"], "a temporary directory was left"


def test_force_does_not_replace_what_is_not_a_checkpoint(tmp_path, capsys):
    target = tmp_path / "home"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, err = release(target, "--force", capsys=capsys)
    assert code == 2 and "not a checkpoint directory" in err
    assert (target / "notes.txt").read_text() == "mine"


def test_a_failed_release_leaves_the_old_one(tmp_path, capsys, monkeypatch):
    """The release is written beside the target and renamed in only when complete."""
    target = old_release(tmp_path / "eve-tiny")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("training.release.copy_tokenizer", disk_full)  # fails after the weights are written
    with pytest.raises(OSError, match="No space left"):
        main(["--from", str(SOURCE), "--to", str(target), "--force"])
    assert (target / "model.safetensors").read_bytes() == b"other weights" and (target / "README.md").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["eve-tiny"]


def test_released_weights_load(tmp_path, capsys):
    from models.checkpoint import load_model

    code, err = release(tmp_path / "out", "--dtype", "float16", capsys=capsys)
    assert code == 0, err
    model = load_model(tmp_path / "out", dtype=torch.float16)
    assert next(model.parameters()).dtype == torch.float16
