"""Which family a checkpoint is, from its config.json, and how to build its model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from huggingface_hub.errors import StrictDataclassError
from torch import nn

from runtime.errors import CheckpointError

from .config_fields import EAGLE2, EAGLE2_5, EAGLE_V1, EVE, EVEV2, Section, check_config, one_line, shown


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    builder: Callable  # (config dict, training: bool) -> model
    fields: Section  # what its config.json may hold (models/config_fields.py)
    # Keys a published checkpoint may hold that inference does not use (training-only modules,
    # recomputable buffers, an unused pooling head): tolerated on load when not training.
    ignored_at_inference: tuple[str, ...] = ()
    # Build options the family cannot take, each with the one-line reason given before any work is done.
    refused: tuple[tuple[str, str], ...] = ()

    def refusal(self, option: str) -> str | None:
        """Why `option` ("tensorrt", "quant") can't be used for this family, or None."""
        return dict(self.refused).get(option)

    def build(self, config: dict, training: bool, where: str = "config.json") -> nn.Module:
        """The model `config` describes, once its fields are checked: a damaged one is a one-line CheckpointError."""
        check_config(config, self.fields, where)
        try:
            return self.builder(config, training)
        except StrictDataclassError as e:  # transformers' type checks of the fields Aerie does not read itself
            raise CheckpointError(f"{where}: {one_line(str(e))}; correct config.json or "
                                  "download the checkpoint again") from None


def _build_eve(config: dict, training: bool):
    from .eve import EVEConfig, EVELlamaForCausalLM

    return EVELlamaForCausalLM(EVEConfig(**config), with_patch_aligner=training)


def _build_evev2(config: dict, training: bool):
    from .evev2 import EVEv2Config, EVEv2ForCausalLM

    return EVEv2ForCausalLM(EVEv2Config(**config))


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
        EVE,
        ignored_at_inference=(r"^model\.vision_clip\.", r"^model\.vision_tower_compressor\."),
    ),
    "evev2": Family(
        "evev2",
        ("eve-qwen2",),
        _build_evev2,
        EVEV2,
        refused=(
            ("tensorrt", "EVEv2 cannot be built for --backend tensorrt: every decoder layer holds a text and an image "
                         "copy of its norms, attention projections and MLP and picks one per position (modality-routed "
                         "weights), which a TensorRT-LLM Qwen2 engine (one weight set per layer) cannot express; use "
                         "--backend ort"),
            ("quant", "EVEv2 cannot be quantized: Aerie quantizes into a TensorRT-LLM checkpoint, which "
                      "cannot hold the image copies of each layer's weights; build it without --quant"),
        ),
    ),
    "eagle2_5": Family(
        "eagle2_5",
        ("eagle_2_5_vl",),
        _build_eagle2_5,
        EAGLE2_5,
        ignored_at_inference=(r"^vision_model\.vision_model\.head\.",),
    ),
    "eagle2": Family(
        "eagle2",
        ("eagle_chat",),
        _build_eagle2,
        EAGLE2,
        ignored_at_inference=(
            r"^vision_model\.vision_model\.head\.",  # SigLIP's pooling head
            r"^vision_model\.vision_model\.vision_towers\.\d+\.vision_tower\.(vision_model\.)?head\.",  # 9B: both heads
        ),
    ),
    "eagle_v1": Family(
        "eagle_v1",
        ("eagle_llama",),
        _build_eagle_v1,
        EAGLE_V1,
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
    raise CheckpointError(f"{where}: unknown model_type {shown(model_type)}; Aerie builds {', '.join(known)}")


def is_ignored(family: Family, key: str) -> bool:
    return any(re.search(pattern, key) for pattern in family.ignored_at_inference)
