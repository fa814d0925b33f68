"""The LLaVA-style projector of Eagle v1 and EVE v1: `mlp2x_gelu` = Linear, GELU, Linear."""

from __future__ import annotations

import re

from torch import nn

PROJECTORS = re.compile(r"linear|mlp([1-9])x_gelu")  # LLaVA's names, up to 9 layers (the models use mlp2x_gelu)


def build_projector(kind: str, in_features: int, out_features: int) -> nn.Module:
    """`linear` or `mlp{N}x_gelu` as in LLaVA's builder; keys `mm_projector.{0,2,...}`."""
    match = PROJECTORS.fullmatch(kind)
    if not match:
        raise ValueError(f"unknown mm_projector_type {kind!r}; expected 'linear' or 'mlp2x_gelu'")
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_features, out_features)]
    return nn.Sequential(*layers)
