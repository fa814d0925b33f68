"""Computing in float32 from weights stored in another dtype, one block of the model at a time.

A loaded model keeps the checkpoint's tensors (fp16/bf16, memory-mapped: models/checkpoint.py). The oracle and
the calibration must compute in float32 — what the float32 engines compute — without holding a float32 copy of a
7B model. Inside `float32_compute(model)` every module casts weights to float32 for the length of its forward and
puts the stored tensors back after it: the whole subtree when its float32 weights fit in `block_bytes` (a decoder
layer, a vision encoder layer, a tower's embeddings), else only its own. The first module called that fits casts
its subtree, so the modules inside it find float32 weights, and code that reads a child's dtype before calling it
(Hugging Face's SigLIP embeddings do) sees float32. The extra memory is about one block.

The model's root is called by its methods (`encode_images`), which no hook sees: its own weights (a CLS or
newline embedding) are cast for the whole block instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

BLOCK_BYTES = 512 * 1024**2


def float32_bytes(module: nn.Module, recurse: bool = True) -> int:
    return 4 * sum(p.numel() for p in module.parameters(recurse=recurse))


def cast_parameters(params: Iterable[nn.Parameter], dtype: torch.dtype) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Give each floating parameter of another dtype a `dtype` copy of its data; returns what to put back."""
    stored = []
    for p in dict.fromkeys(params):  # a tied weight appears twice
        if p.is_floating_point() and p.dtype != dtype:
            stored.append((p, p.data))
            p.data = p.data.to(dtype)
    return stored


def restore_parameters(stored: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    for p, data in stored:
        p.data = data


@contextmanager
def parameters_as(params: Iterable[nn.Parameter], dtype: torch.dtype) -> Iterator[None]:
    """Every floating parameter of `params` in `dtype` inside the block (the stored tensors come back after)."""
    stored = cast_parameters(params, dtype)
    try:
        yield
    finally:
        restore_parameters(stored)


@contextmanager
def float32_compute(model: nn.Module, block_bytes: int = BLOCK_BYTES) -> Iterator[None]:
    """Inside the block, every forward of `model` computes in float32, about one block's weights cast at a time."""
    def stored_elsewhere(params: Iterable[nn.Parameter]) -> bool:
        return any(p.is_floating_point() and p.dtype != torch.float32 for p in params)

    if not stored_elsewhere(model.parameters()):
        yield
        return
    handles = []
    root = cast_parameters(model.parameters(recurse=False), torch.float32)
    for module in model.modules():
        if module is model or not stored_elsewhere(module.parameters()):
            continue
        recurse = float32_bytes(module) <= block_bytes
        stored: list[list] = []

        def cast(m: nn.Module, args, recurse: bool = recurse, stored: list = stored) -> None:
            stored.append(cast_parameters(m.parameters(recurse=recurse), torch.float32))

        def restore(m: nn.Module, args, output, stored: list = stored) -> None:
            if stored:
                restore_parameters(stored.pop())

        handles.append(module.register_forward_pre_hook(cast))
        handles.append(module.register_forward_hook(restore, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        restore_parameters(root)
