"""Eagle2.5 (nvidia/Eagle2.5-8B), and through models/eagle2.py the Eagle2 family's SigLIP models: SigLIP on 448²
tiles, pixel shuffle by 0.5, the `mlp1` connector, a Qwen2 decoder. Faithful to NVlabs/Eagle
`Eagle2_5/eaglevl/model/eagle2_5/{configuration,modeling}_eagle2_5_vl.py`; key names `vision_model.vision_model.*`,
`mlp1.{0,1,3}.*` (two-layer connector) or `mlp1.0.*` (one layer), `language_model.model.*`,
`language_model.lm_head.*`.

What upstream's config reads and Aerie with it: `llm_config` as an alias of `text_config` (it wins when both are
given), `use_pixel_shuffle`, `mlp_connector_layers` (1 or 2), `template`, `min/max_dynamic_tiles`. Upstream also
builds RADIO and InternViT towers and Llama, Phi3 and Qwen3 decoders; Aerie refuses those with the field named.
Defaults matter only for fields a config.json lacks (upstream's `to_dict` writes every one); Aerie's follow vLLM's
`eagle2_5_vl.py` and the release's preprocessor config, not upstream's class defaults (select_layer -4, one tile,
no thumbnail). The attention
implementation is Aerie's (the one its exporters trace): upstream's training script saves
`_attn_implementation: flash_attention_2` into config.json, which must not reach the transformers configs.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from runtime.errors import CheckpointError
from runtime.preprocess import SIGLIP_MEAN, SIGLIP_STD, PreprocessSpec

from .vlm import VisionLanguageModel

ATTENTION = "sdpa"
# Keys by which a config.json picks the attention kernels; dropped on load, since Aerie picks its own.
ATTENTION_FIELDS = ("_attn_implementation", "_attn_implementation_autoset", "attn_implementation")
# Upstream's conversation.py template names -> Aerie's (runtime/templates.py).
TEMPLATES = {"qwen2-chat": "qwen2_chatml"}


def without_attention_choice(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if k not in ATTENTION_FIELDS and k != "model_type"}


def siglip_config(value: dict | SiglipVisionConfig | None) -> SiglipVisionConfig:
    """The SigLIP tower's config; any other tower (upstream's RADIO, InternViT, Eagle2's mixture) is refused."""
    if isinstance(value, SiglipVisionConfig):
        return value
    value = dict(value or {"model_type": "siglip_vision_model"})
    tower = value.get("model_type", "siglip_vision_model")
    if tower != "siglip_vision_model":
        raise CheckpointError(f"config.json: vision_config.model_type {tower!r} is not supported; Aerie builds "
                              "this family with a SigLIP tower (siglip_vision_model)")
    config = SiglipVisionConfig(**without_attention_choice(value))
    config._attn_implementation = ATTENTION
    return config


def qwen2_config(value: dict | Qwen2Config | None, field: str) -> Qwen2Config:
    """The decoder's config (upstream picks the class by `architectures[0]`); only Qwen2 is built."""
    if isinstance(value, Qwen2Config):
        return value
    value = dict(value or {})
    architectures = value.get("architectures") or ["Qwen2ForCausalLM"]
    if architectures[0] != "Qwen2ForCausalLM":
        raise CheckpointError(f"config.json: {field}.architectures {architectures!r} is not supported; Aerie "
                              "builds this family with a Qwen2 decoder (Qwen2ForCausalLM)")
    config = Qwen2Config(**without_attention_choice(value))
    config._attn_implementation = ATTENTION
    return config


def aerie_template(name: str) -> str:
    if name not in TEMPLATES:
        raise CheckpointError(f"config.json: template {name!r} is not supported; Aerie knows "
                              f"{', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


class Eagle25Config(PretrainedConfig):
    model_type = "eagle_2_5_vl"
    sub_configs = {"vision_config": SiglipVisionConfig, "text_config": Qwen2Config}

    def __init__(
        self,
        vision_config: dict | SiglipVisionConfig | None = None,
        text_config: dict | Qwen2Config | None = None,
        select_layer: int = -1,
        force_image_size: int | None = 448,
        downsample_ratio: float = 0.5,
        dynamic_image_size: bool = True,
        use_thumbnail: bool = True,
        min_dynamic_tiles: int = 1,
        max_dynamic_tiles: int = 12,
        template: str = "qwen2-chat",
        use_pixel_shuffle: bool = True,
        mlp_connector_layers: int = 2,
        image_token_index: int | None = None,
        llm_config: dict | Qwen2Config | None = None,
        **kwargs,
    ):
        for name in ATTENTION_FIELDS:
            kwargs.pop(name, None)
        self.vision_config = self.read_vision_config(vision_config)
        field = "llm_config" if llm_config is not None else "text_config"
        self.text_config = qwen2_config(llm_config if llm_config is not None else text_config, field)
        if mlp_connector_layers not in (1, 2):
            raise CheckpointError(f"config.json: mlp_connector_layers {mlp_connector_layers!r} is not supported; "
                                  "upstream builds 1 or 2")
        if mlp_connector_layers == 2 and not use_pixel_shuffle:
            raise CheckpointError("config.json: mlp_connector_layers 2 with use_pixel_shuffle false: upstream's "
                                  "two-layer connector takes pixel-shuffled features only")
        aerie_template(template)
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.min_dynamic_tiles = min_dynamic_tiles
        self.max_dynamic_tiles = max_dynamic_tiles
        self.template = template
        self.use_pixel_shuffle = use_pixel_shuffle
        self.mlp_connector_layers = mlp_connector_layers
        self.image_token_index = image_token_index
        kwargs.setdefault("tie_word_embeddings", self.text_config.tie_word_embeddings)
        super().__init__(**kwargs)

    @staticmethod
    def read_vision_config(value: dict | PretrainedConfig | None) -> PretrainedConfig:
        config = siglip_config(value)
        # Eagle2.5 needs every patch token: the pooling head is never built (vLLM sets the same).
        config.vision_use_head = False
        return config

    @property
    def tile_size(self) -> int:
        return self.force_image_size or self.vision_config.image_size

    @property
    def tokens_per_tile(self) -> int:
        patches = self.tile_size // self.vision_config.patch_size
        return int(patches * patches * (self.downsample_ratio**2 if self.use_pixel_shuffle else 1))

    @property
    def tile_range(self) -> tuple[int, int]:
        """(min, max) tiles per image; one tile without dynamic_image_size (vLLM's
        resolve_eagle2_5_vl_min_max_num)."""
        return (self.min_dynamic_tiles, self.max_dynamic_tiles) if self.dynamic_image_size else (1, 1)


def pixel_shuffle(x: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
    """[n, w, h, c] -> [n, w*s, h*s, c/s²], the InternVL/Eagle ps_version 'v2' order."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3)
    x = x.reshape(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    return x.permute(0, 2, 1, 3)


def connector(width: int, llm: int, layers: int) -> nn.Sequential:
    """`mlp1` as upstream builds it: LayerNorm, Linear, GELU, Linear, or one Linear."""
    if layers == 1:
        return nn.Sequential(nn.Linear(width, llm))
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, llm), nn.GELU(), nn.Linear(llm, llm))


class SiglipTower(nn.Module):
    """Holds HF's SiglipVisionModel under `.vision_model`, so keys read `vision_model.vision_model.*`
    as in the published checkpoints (transformers 5 flattened the inner module)."""

    def __init__(self, config: SiglipVisionConfig, select_layer: int):
        super().__init__()
        self.vision_model = SiglipVisionModel(config)
        self.select_layer = select_layer

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.select_layer == -1:
            return self.vision_model(pixel_values=pixel_values).last_hidden_state
        return self.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.select_layer]


class Eagle25ForConditionalGeneration(nn.Module, VisionLanguageModel):
    family = "eagle2_5"
    architecture = "Eagle2_5_VLForConditionalGeneration"

    def __init__(self, config: Eagle25Config):
        super().__init__()
        self.config = config
        self.vision_model = self.vision_tower(config)
        self.mlp1 = connector(self.feature_width(), config.text_config.hidden_size, config.mlp_connector_layers)
        self.language_model = Qwen2ForCausalLM(config.text_config)

    def vision_tower(self, config: Eagle25Config) -> nn.Module:
        return SiglipTower(config.vision_config, config.select_layer)

    def feature_width(self) -> int:
        """Channels of what `mlp1` takes: the tower's, times 1/ratio² after the pixel shuffle."""
        vit = self.config.vision_config.hidden_size
        return vit * int(1 / self.config.downsample_ratio) ** 2 if self.config.use_pixel_shuffle else vit

    @property
    def chat_template(self) -> str:  # type: ignore[override]
        return aerie_template(self.config.template)

    @property
    def decoder(self) -> nn.Module:
        return self.language_model

    def preprocess_spec(self, **overrides) -> PreprocessSpec:
        c = self.config
        min_tiles, max_tiles = c.tile_range
        fields = dict(kind="dynamic_tiles", image_size=c.tile_size, mean=SIGLIP_MEAN, std=SIGLIP_STD,
                      tokens_per_tile=c.tokens_per_tile, min_tiles=min_tiles, max_tiles=max_tiles,
                      use_thumbnail=c.use_thumbnail)
        return PreprocessSpec(**{**fields, **overrides})

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles [n, 3, T, T] -> the tower's tokens, pixel-shuffled: [n, tokens_per_tile, feature_width]."""
        embeds = self.vision_model(pixel_values)
        if self.config.use_pixel_shuffle:
            side = self.config.tile_size // self.config.vision_config.patch_size
            embeds = embeds.reshape(embeds.shape[0], side, side, -1)
            embeds = pixel_shuffle(embeds, self.config.downsample_ratio)
            embeds = embeds.reshape(embeds.shape[0], -1, embeds.shape[-1])
        return embeds

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles [n, 3, T, T] -> [n, tokens_per_tile, hidden]."""
        return self.mlp1(self.features(pixel_values))
