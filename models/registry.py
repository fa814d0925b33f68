"""Which family a checkpoint is, from its config.json, and how to build its model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from runtime.errors import CheckpointError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    build: Callable  # (config dict, training: bool) -> model
    # Keys a published checkpoint may hold that inference does not use (training-only modules,
    # recomputable buffers, an unused pooling head): tolerated on load when not training.
    ignored_at_inference: tuple[str, ...] = ()


def _build_eve(config: dict, training: bool):
    from .eve import EVEConfig, EVELlamaForCausalLM

    return EVELlamaForCausalLM(EVEConfig(**config), with_patch_aligner=training)


def _build_eagle2_5(config: dict, training: bool):
    from .eagle2_5 import Eagle25Config, Eagle25ForConditionalGeneration

    return Eagle25ForConditionalGeneration(Eagle25Config(**config))


def _build_eagle2(config: dict, training: bool):
    from .eagle2 import Eagle2ChatModel, Eagle2Config, Eagle2MixtureModel

    config = Eagle2Config(**config)
    return (Eagle2ChatModel if config.mixture is None else Eagle2MixtureModel)(config)


def _build_eagle_v1(config: dict, training: bool):
    from .eagle_v1 import EagleConfig, EagleLlamaForCausalLM

    return EagleLlamaForCausalLM(EagleConfig(**config))


FAMILIES: dict[str, Family] = {
    "eve": Family(
        "eve",
        ("eve",),
        _build_eve,
        ignored_at_inference=(r"^model\.vision_clip\.", r"^model\.vision_tower_compressor\."),
    ),
    "eagle2_5": Family(
        "eagle2_5",
        ("eagle_2_5_vl",),
        _build_eagle2_5,
        ignored_at_inference=(r"^vision_model\.vision_model\.head\.",),
    ),
    "eagle2": Family(
        "eagle2",
        ("eagle_chat",),
        _build_eagle2,
        ignored_at_inference=(
            r"^vision_model\.vision_model\.head\.",  # SigLIP's pooling head
            r"^vision_model\.vision_model\.vision_towers\.\d+\.vision_tower\.(vision_model\.)?head\.",  # 9B: both heads
        ),
    ),
    "eagle_v1": Family(
        "eagle_v1",
        ("eagle_llama",),
        _build_eagle_v1,
        ignored_at_inference=(
            r"^model\.vision_tower\.vision_towers\.\d+\.vision_tower\.(rope_win|rope_glb|blocks\.\d+\.attn\.rope)\.freqs_(cos|sin)$",  # EVA: recomputed
            r"^model\.vision_tower\.vision_towers\.\d+\.vision_tower\.head\.",  # ConvNeXt's classifier head
            r"^model\.vision_tower\.vision_towers\.\d+\.vision_tower\.vision_model\.post_layernorm\.",  # CLIP: never applied
            r"^model\.vision_tower\.vision_towers\.\d+\.vision_tower\.vision_model\.embeddings\.position_ids$",  # CLIP: a buffer older transformers saved
        ),
    ),
}



def detect_family(config: dict, where: str = "config.json") -> Family:
    model_type = config.get("model_type")
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise CheckpointError(f"{where}: unknown model_type {model_type!r}; Aerie builds {', '.join(known)}")


def is_ignored(family: Family, key: str) -> bool:
    return any(re.search(pattern, key) for pattern in family.ignored_at_inference)
