"""Writing a safetensors file one tensor at a time (safetensors' own `save_file` builds the whole file in memory
first, which a 7B checkpoint cannot afford). A tensor may be given as a `Pending`: its dtype and shape for the
header, and a function that makes it when its turn to be written comes (a concatenation, a cast).

The format (github.com/huggingface/safetensors): an 8-byte little-endian header length, the JSON header naming
each tensor's dtype, shape and byte range, padded with spaces to 8 bytes, then the tensors' bytes in that order.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


@dataclass(frozen=True)
class Pending:
    """A tensor made only when it is written."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]


def nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count * torch.empty((), dtype=dtype).element_size()


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor | Pending],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write `tensors` to `path` (atomically), holding one tensor at a time beyond what the caller holds."""
    path = Path(path)
    layout, offset = {}, 0
    for name, t in tensors.items():
        dtype, shape = t.dtype, tuple(t.shape)
        size = nbytes(dtype, shape)
        layout[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = {"__metadata__": dict(metadata)} if metadata else {}
    header.update(layout)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, t in tensors.items():
            tensor = t.make() if isinstance(t, Pending) else t
            if tensor.dtype != t.dtype or tuple(tensor.shape) != tuple(t.shape):
                raise ValueError(f"{name}: made {tensor.dtype} {tuple(tensor.shape)}, announced {t.dtype} {tuple(t.shape)}")
            f.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    os.replace(tmp, path)
    return path


def write_shards(directory: str | Path, tensors: Mapping[str, torch.Tensor | Pending], max_shard_bytes: int,
                 single: str = "model.safetensors", index: str = "model.safetensors.index.json") -> list[Path]:
    """Hugging Face's layout: one `single` file, or `model-0000i-of-0000n.safetensors` shards of at most
    `max_shard_bytes` (a tensor larger than that gets a shard of its own) with an `index` naming each tensor's
    shard. Stale weight files of an earlier save are removed first. Returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    size = 0
    for name, t in tensors.items():
        n = nbytes(t.dtype, tuple(t.shape))
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    stem = Path(single).stem
    for stale in [*directory.glob(f"{stem}*.safetensors"), directory / index]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        return [write_safetensors(directory / single, shards[0], metadata={"format": "pt"})]
    written, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        written.append(write_safetensors(directory / name, shard, metadata={"format": "pt"}))
        weight_map.update({k: name for k in shard})
    total = sum(nbytes(t.dtype, tuple(t.shape)) for t in tensors.values())
    (directory / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                              indent=2, sort_keys=True) + "\n")
    return [*written, directory / index]
