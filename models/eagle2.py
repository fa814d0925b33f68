"""Eagle2 (nvidia/Eagle2-1B, -2B, -9B): InternVL's design as Eagle2.5 kept it, under the same key names
(`vision_model.vision_model.*`, `mlp1.{0,1,3}.*`, `language_model.*`), so the Eagle2.5 model serves it. Faithful
to the HF release's `configuration_eagle2.py` / `modeling_eagle2.py` (`Eagle2ChatConfig`, `Eagle2ChatModel`) and
NVlabs/Eagle `Eagle2/inference/inference.py`: SigLIP on 448² tiles normalised with mean = std = 0.5, pixel shuffle
by 0.5, LayerNorm + Linear + GELU + Linear, a Qwen2.5 decoder, the `qwen2-chat` template.

What differs is the config.json: `model_type: eagle_chat`, the decoder under `llm_config`, tile counts as
`min/max_dynamic_patch`, no `use_pixel_shuffle`/`mlp_connector_layers` (always the shuffle and two layers), and
InternVL's defaults (no dynamic tiles, no thumbnail, at most 6 tiles). Eagle2-9B's tower (`model_type: MOB`, SigLIP
and ConvNeXt channel-concatenated before `mlp1`) is models/eagle2_mixture.py. LoRA-wrapped weights are refused.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, Qwen2Config, SiglipVisionConfig

from runtime.errors import CheckpointError

from .eagle2_5 import Eagle25Config, Eagle25ForConditionalGeneration
from .eagle2_mixture import Mixture, MixtureVisionModel, read_mixture


class MixtureConfig(PretrainedConfig):
    """A MOB `vision_config`, its fields kept as config.json has them (models/eagle2_mixture.py reads them)."""

    model_type = "MOB"


def is_mixture(vision_config: object) -> bool:
    """Whether a config.json's vision_config is the MOB tower (Eagle2-9B's)."""
    return isinstance(vision_config, dict) and str(vision_config.get("model_type", "")).startswith("MOB")


class Eagle2Config(Eagle25Config):
    model_type = "eagle_chat"

    def __init__(
        self,
        vision_config: dict | SiglipVisionConfig | None = None,
        llm_config: dict | Qwen2Config | None = None,
        select_layer: int = -1,
        force_image_size: int | None = None,
        downsample_ratio: float = 0.5,
        template: str | None = None,
        dynamic_image_size: bool = False,
        use_thumbnail: bool = False,
        min_dynamic_patch: int = 1,
        max_dynamic_patch: int = 6,
        use_backbone_lora: int = 0,
        use_llm_lora: int = 0,
        **kwargs,
    ):
        for field, rank in (("use_backbone_lora", use_backbone_lora), ("use_llm_lora", use_llm_lora)):
            if rank:
                raise CheckpointError(f"config.json: {field} {rank}: the weights are LoRA-wrapped; merge the LoRA "
                                      "into the model and save it without")
        if is_mixture(vision_config) and select_layer != -1:
            raise CheckpointError(f"config.json: select_layer {select_layer} with the MOB tower: upstream takes its "
                                  "last features only (select_layer -1)")
        # Upstream's pre_feature_reduction, keep_aspect_ratio and mlp_checkpoint change nothing at inference, and
        # Eagle2ChatConfig keeps Eagle2.5's field names unread.
        for name in ("use_pixel_shuffle", "mlp_connector_layers", "text_config", "min_dynamic_tiles",
                     "max_dynamic_tiles"):
            kwargs.pop(name, None)
        super().__init__(
            vision_config=vision_config, llm_config=llm_config or {}, select_layer=select_layer,
            force_image_size=force_image_size, downsample_ratio=downsample_ratio, template=template,
            dynamic_image_size=dynamic_image_size, use_thumbnail=use_thumbnail, min_dynamic_tiles=min_dynamic_patch,
            max_dynamic_tiles=max_dynamic_patch, **kwargs,
        )

    @staticmethod
    def read_vision_config(value: dict | PretrainedConfig | None) -> PretrainedConfig:
        """SigLIP (1B, 2B) or the MOB mixture (9B)."""
        if isinstance(value, MixtureConfig):
            return value
        if is_mixture(value):
            read_mixture(value)
            return MixtureConfig(**{k: v for k, v in value.items() if k != "model_type"})
        return Eagle25Config.read_vision_config(value)

    @property
    def mixture(self) -> Mixture | None:
        return read_mixture(self.vision_config.to_dict()) if isinstance(self.vision_config, MixtureConfig) else None

    @property
    def tokens_per_tile(self) -> int:
        if self.mixture is None:
            return super().tokens_per_tile
        return int((self.mixture.grid_size * self.downsample_ratio) ** 2)

    def to_dict(self) -> dict:
        """The fields under upstream's names, as `Eagle2ChatConfig.to_dict` writes them."""
        out = super().to_dict()
        out["llm_config"] = out.pop("text_config")
        out["min_dynamic_patch"] = out.pop("min_dynamic_tiles")
        out["max_dynamic_patch"] = out.pop("max_dynamic_tiles")
        for name in ("use_pixel_shuffle", "mlp_connector_layers"):
            out.pop(name)
        return out


class Eagle2ChatModel(Eagle25ForConditionalGeneration):
    family = "eagle2"
    architecture = "Eagle2ChatModel"


class Eagle2MixtureModel(Eagle2ChatModel):
    """Eagle2-9B: the MOB tower's features, concatenated and pixel-shuffled upstream's way, into `mlp1`."""

    def vision_tower(self, config: Eagle2Config) -> nn.Module:
        return MixtureVisionModel(config.mixture)

    def feature_width(self) -> int:
        return self.vision_model.vision_model.connector_width(self.config.downsample_ratio)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model.vision_model(pixel_values, self.config.downsample_ratio)
