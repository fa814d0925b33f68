"""Hugging Face checkpoint directories: config.json plus safetensors (one file or shards with an index),
under the published key names. Pickle files are read only with `weights_only=True`.

For inference a model is built without initialising its weights (allocated but never written, so they cost no
memory) and each parameter is then replaced by the checkpoint's tensor: a memory-mapped view of the safetensors
file in the checkpoint's own dtype, read from disk as it is used. A 7B fp16 checkpoint loads in seconds and holds
no second copy; models/precision.py computes in float32 from such weights a block at a time.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import pickle
import re
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from runtime.errors import CheckpointError

from .registry import Family, detect_family, is_ignored
from .tensor_file import write_shards

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"
MAX_CONFIG_BYTES = 16 << 20  # published config.json files are a few kilobytes
MADV_PAGEOUT = 21  # Linux 5.4+: reclaim the pages now (file-backed ones are dropped, anonymous ones kept without swap)


def read_config(directory: str | Path) -> dict:
    """config.json as a dict; a file that is not a JSON object in UTF-8 is a CheckpointError. Its fields are
    checked when a model is built from it (models/config_fields.py)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json; point at a Hugging Face checkpoint directory")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, over the {MAX_CONFIG_BYTES >> 20} MiB a "
                              "config.json can need; it is not a model configuration")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {e.start}); the file is damaged, download it "
                              "again") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is damaged, download it again") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a model configuration") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(config).__name__}, not an object of fields; the file is "
                              "damaged, download it again")
    return config


def safetensors_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's memory-mapped .safetensors files (Linux; none elsewhere)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(".safetensors"):
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def release_pages(module: nn.Module) -> None:
    """Take `module`'s weights that are memory-mapped from a safetensors file out of this process's resident
    memory (read from the file again if used again). A build pass that reads a checkpoint a layer at a time
    (quantizing, exporting) then holds about one layer of it, not every layer it has passed. Other memory is
    left alone; without MADV_PAGEOUT (Linux 5.4+) this does nothing."""
    mapped = safetensors_mappings()
    if not mapped:
        return
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for p in module.parameters():
        start = p.data_ptr()
        if not any(lo <= start < hi for lo, hi in mapped):
            continue
        first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, (start + p.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:  # whole pages only: a neighbouring tensor's part of a page stays
            madvise(first, last - first, MADV_PAGEOUT)


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


def shard_path(directory: Path, index_path: Path, name: object) -> Path:
    """A shard the index names, which must be a file name inside the checkpoint directory."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or \
            not (directory / name).resolve().is_relative_to(directory.resolve()):
        raise CheckpointError(f"{index_path}: shard {name!r} lies outside the checkpoint directory; the index is "
                              "damaged or hostile, re-download the checkpoint")
    return directory / name


def read_weight_map(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: not a weight index ({type(e).__name__}: {e}); re-download the "
                              "checkpoint") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: weight_map is not a mapping; re-download the checkpoint")
    return weight_map


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, from `model.safetensors(.index.json)` or, failing that, the pickle files.
    Safetensors tensors are memory-mapped views in the file's dtype: nothing is read until it is used."""
    directory = Path(directory)
    for index_name in (SAFETENSORS_INDEX, PICKLE_INDEX):
        index_path = directory / index_name
        if index_path.is_file():
            weight_map = read_weight_map(index_path)
            shards = [shard_path(directory, index_path, name) for name in dict.fromkeys(weight_map.values())]
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_load_shard(shard))
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


def check_keys(model: nn.Module, state: dict[str, torch.Tensor], family: Family, where: str,
               allow_missing: tuple[str, ...] = ()) -> set[str]:
    """The model's keys the checkpoint provides; a CheckpointError naming every missing or unexpected key
    (a tied lm_head may be absent, and so may keys matching `allow_missing`)."""
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
    return expected & set(state)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], family: Family, where: str,
                 allow_missing: tuple[str, ...] = ()) -> None:
    """Copy `state` into `model`'s own (initialised) tensors; see check_keys for what may be absent."""
    provided = check_keys(model, state, family, where, allow_missing)
    model.load_state_dict({k: state[k] for k in provided}, strict=False)


def assign_weights(model: nn.Module, state: dict[str, torch.Tensor], family: Family, where: str,
                   dtype: torch.dtype | None = None) -> None:
    """Make `state`'s tensors the model's parameters (no copy unless `dtype` asks for another float type);
    buffers the checkpoint holds are copied into the model's own. A tied lm_head is tied again."""
    tied = tied_keys(model)
    provided = check_keys(model, state, family, where)
    for key in provided:
        module_name, _, name = key.rpartition(".")
        module = model.get_submodule(module_name)
        tensor = state[key]
        if name in module._parameters:
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[name].copy_(tensor)
    for key in tied - provided:  # the lm_head shares the token table it was built tied to
        module_name, _, name = key.rpartition(".")
        embed_key = next(k for k in provided if k.endswith("embed_tokens.weight"))
        embed_module, _, embed_name = embed_key.rpartition(".")
        model.get_submodule(module_name)._parameters[name] = model.get_submodule(embed_module)._parameters[embed_name]


def build_model(config: dict, training: bool = False, where: str = CONFIG) -> nn.Module:
    """A randomly initialised model of the family that `config` (a config.json dict) names."""
    return detect_family(config, where).build(config, training, where)


def build_empty_model(config: dict, where: str = CONFIG) -> nn.Module:
    """The model `config` names for inference, its weights allocated but never initialised or touched: they cost
    no memory until assign_weights replaces them (buffers such as rotary tables are computed as usual)."""
    family = detect_family(config, where)
    with no_init_weights():
        model = family.build(config, False, where)
    # Hugging Face ties lm_head to the token table while initialising, which no_init_weights skipped.
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.tie_weights()
    return model


def load_model(directory: str | Path, dtype: torch.dtype | None = None, training: bool = False,
               allow_missing: tuple[str, ...] = ()) -> nn.Module:
    """Build the model config.json describes and load its weights; eval mode unless `training`.

    For inference the weights stay the checkpoint's own tensors (memory-mapped safetensors) in its dtype, or are
    converted to `dtype` when given. For training the model is initialised (keys matching `allow_missing` may be
    absent and keep their initialisation) and holds float32 copies, or `dtype` ones."""
    directory = Path(directory)
    config = read_config(directory)
    where = str(directory / CONFIG)
    family = detect_family(config, where)
    state = read_state_dict(directory)
    if training:
        model = family.build(config, True, where).to(dtype or torch.float32)
        load_weights(model, state, family, str(directory), allow_missing)
        return model.train()
    model = build_empty_model(config, where)
    assign_weights(model, state, family, str(directory), dtype)
    return model.eval()


def save_model(model: nn.Module, directory: str | Path, max_shard_bytes: int = 5 * 1024**3) -> Path:
    """Write config.json and safetensors (sharded with an index above `max_shard_bytes`), a tensor at a time."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["architectures"] = [getattr(model, "architecture", type(model).__name__)]
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    skip = tied_keys(model)
    state = {k: v.detach() for k, v in model.state_dict().items() if k not in skip}
    write_shards(directory, state, max_shard_bytes, SAFETENSORS, SAFETENSORS_INDEX)
    return directory
