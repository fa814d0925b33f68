"""Hugging Face checkpoint directories: config.json plus safetensors (one file or shards with an index),
under the published key names. Pickle files are read only with `weights_only=True`."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from runtime.errors import CheckpointError

from .registry import Family, detect_family, is_ignored

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json; point at a Hugging Face checkpoint directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: a weight shard named by the index is missing; re-download the checkpoint")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message spans lines and suggests weights_only=False; keep only what the pickle holds.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        detail = f"it references {found.group(1)}" if found else "refused by the weights-only unpickler"
        raise CheckpointError(
            f"{path}: cannot read the weights: the pickle holds more than tensors ({detail}), and "
            "Aerie unpickles with weights_only=True only; convert it to safetensors on a machine you trust"
        ) from None
    except Exception as e:  # safetensors and torch raise many unrelated types for a damaged file
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read the weights ({first_line}); the file is damaged or not a checkpoint") from None


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, from `model.safetensors(.index.json)` or, failing that, the pickle files."""
    directory = Path(directory)
    for index_name in (SAFETENSORS_INDEX, PICKLE_INDEX):
        index_path = directory / index_name
        if index_path.is_file():
            weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
            state: dict[str, torch.Tensor] = {}
            for shard in dict.fromkeys(weight_map.values()):
                state.update(_load_shard(directory / shard))
            absent = [k for k in weight_map if k not in state]
            if absent:
                raise CheckpointError(f"{index_path}: {len(absent)} tensors listed but not in their shard, e.g. {absent[0]}")
            return state
    for single in (SAFETENSORS, PICKLE):
        if (directory / single).is_file():
            return _load_shard(directory / single)
    raise CheckpointError(
        f"{directory}: no weights found; expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {PICKLE} or {PICKLE_INDEX}"
    )


def _listing(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def tied_keys(model: nn.Module) -> set[str]:
    """lm_head keys that share the token-embedding tensor (absent from tied checkpoints)."""
    state = model.state_dict()
    embed = [k for k, v in state.items() if k.endswith("embed_tokens.weight")]
    return {
        k
        for k, v in state.items()
        if k.endswith("lm_head.weight") and embed and v.data_ptr() == state[embed[0]].data_ptr()
    }


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], family: Family, where: str,
                 allow_missing: tuple[str, ...] = ()) -> None:
    """Load `state` into `model`, naming every missing or unexpected key; tied lm_head may be absent."""
    expected = set(model.state_dict())
    optional = tied_keys(model) | {k for k in expected if any(re.search(p, k) for p in allow_missing)}
    missing = expected - set(state) - optional
    # Keys the published checkpoints carry but no module uses (a pooling head, a never-applied layernorm) are
    # skipped whether the model is built for inference or for training.
    unexpected = {k for k in set(state) - expected if not is_ignored(family, k)}
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {_listing(unexpected)}")
        raise CheckpointError(
            f"{where}: the weights do not match a {family.name} model of this config.json: {'; '.join(parts)}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def build_model(config: dict, training: bool = False, where: str = CONFIG) -> nn.Module:
    """A randomly initialised model of the family that `config` (a config.json dict) names."""
    return detect_family(config, where).build(config, training)


def load_model(directory: str | Path, dtype: torch.dtype = torch.float32, training: bool = False,
               allow_missing: tuple[str, ...] = ()) -> nn.Module:
    """Build the model config.json describes and load its weights; eval mode unless `training`."""
    directory = Path(directory)
    config = read_config(directory)
    family = detect_family(config, str(directory / CONFIG))
    model = family.build(config, training).to(dtype)
    load_weights(model, read_state_dict(directory), family, str(directory), allow_missing)
    return model.train(training)


def save_model(model: nn.Module, directory: str | Path, max_shard_bytes: int = 5 * 1024**3) -> Path:
    """Write config.json and safetensors (sharded with an index above `max_shard_bytes`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["architectures"] = [getattr(model, "architecture", type(model).__name__)]
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    skip = tied_keys(model)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in skip}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    for stale in list(directory.glob("model*.safetensors")) + [directory / SAFETENSORS_INDEX]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(directory / SAFETENSORS), metadata={"format": "pt"})
        return directory
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return directory
