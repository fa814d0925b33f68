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


def stored_elsewhere(params: Iterable[nn.Parameter]) -> bool:
    """Whether any of `params` is a floating tensor stored in another dtype than float32."""
    return any(p.is_floating_point() and p.dtype != torch.float32 for p in params)


class Float32Compute:
    """`with Float32Compute(model):` every forward of `model` computes in float32, about one block's weights
    cast at a time. Reusable: the float32 copies go into one arena kept between uses, a stack with the running
    block's weights on top, so a decode step copies weights at memory speed rather than allocating (and
    page-faulting) a float32 model's worth of fresh memory every time. A block's output must not be a view of
    its weights (the next block reuses their place). Token embeddings are looked up in their stored dtype and
    the rows cast: exact, and the table is never copied."""

    def __init__(self, model: nn.Module, block_bytes: int = BLOCK_BYTES):
        self.model, self.block_bytes = model, block_bytes
        self.active = stored_elsewhere(model.parameters())
        self.arena: torch.Tensor | None = None
        self.top = 0
        self.handles: list = []
        self.root: list[tuple[nn.Parameter, torch.Tensor]] = []

    def needed(self, module: nn.Module) -> int:
        """Arena elements the deepest nesting of casts below `module` holds at once."""
        if isinstance(module, nn.Embedding) or not stored_elsewhere(module.parameters()):
            return 0
        if float32_bytes(module) <= self.block_bytes:
            return sum(p.numel() for p in dict.fromkeys(module.parameters()) if p.is_floating_point())
        own = sum(p.numel() for p in module.parameters(recurse=False) if p.is_floating_point())
        return own + max((self.needed(child) for child in module.children()), default=0)

    def cast(self, params: Iterable[nn.Parameter]) -> tuple[list[tuple[nn.Parameter, torch.Tensor]], int]:
        """Copy each floating parameter of another dtype into the arena's top and point the parameter at it."""
        stored, bottom = [], self.top
        for p in dict.fromkeys(params):
            if not p.is_floating_point() or p.dtype == torch.float32:
                continue
            n = p.numel()
            if self.top + n <= self.arena.numel():
                copy = self.arena[self.top : self.top + n].view(p.shape)
                copy.copy_(p.data)
                self.top += n
            else:  # deeper than planned (a module called from outside its parent): a fresh copy
                copy = p.data.to(torch.float32)
            stored.append((p, p.data))
            p.data = copy
        return stored, bottom

    def restore(self, entry: tuple[list[tuple[nn.Parameter, torch.Tensor]], int]) -> None:
        stored, bottom = entry
        restore_parameters(stored)
        self.top = bottom

    def __enter__(self) -> "Float32Compute":
        if not self.active:
            return self
        model = self.model
        if self.arena is None:
            own = sum(p.numel() for p in model.parameters(recurse=False) if p.is_floating_point())
            size = own + max((self.needed(child) for child in model.children()), default=0)
            self.arena = torch.empty(size, dtype=torch.float32, device=next(model.parameters()).device)
        # The root's own weights (a CLS or newline embedding) are read by methods no hook sees: cast throughout.
        self.root = self.cast(model.parameters(recurse=False))
        for module in model.modules():
            if module is model or not stored_elsewhere(module.parameters()):
                continue
            if isinstance(module, nn.Embedding):
                self.handles.append(module.register_forward_hook(lambda m, args, out: out.float()))
                continue
            recurse = float32_bytes(module) <= self.block_bytes
            entries: list = []

            def cast(m: nn.Module, args, recurse: bool = recurse, entries: list = entries) -> None:
                entries.append(self.cast(m.parameters(recurse=recurse)))

            def restore(m: nn.Module, args, output, entries: list = entries) -> None:
                if entries:
                    self.restore(entries.pop())

            self.handles.append(module.register_forward_pre_hook(cast))
            self.handles.append(module.register_forward_hook(restore, always_call=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if self.root:
            self.restore(self.root)
            self.root = []
        self.top = 0


def float32_compute(model: nn.Module, block_bytes: int = BLOCK_BYTES) -> Float32Compute:
    """Inside the block, every forward of `model` computes in float32 (one use of Float32Compute)."""
    return Float32Compute(model, block_bytes)
