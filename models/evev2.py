"""EVEv2 (BAAI/EVE-7B-HD-v2.0): an encoder-free VLM on Qwen2.5 with modality-specific decoder weights.

A patch-embedding layer (conv 16 with bias, GELU, conv 2 to the LLM width; a CLS token, a split token after every
row; no projector) feeds a Qwen2 decoder whose every layer holds a second copy of its attention projections, both
RMSNorms and its MLP for image tokens ("divide-and-conquer"). A per-position `visual_token_mask` picks the copy:
image positions use `moe_*`, text positions the original weights. Generated tokens are text. Faithful to
`EVEv2/eve/model/multimodal_encoder/vision_tokenizer.py`, `eve_arch.py`, `language_model/eve_qwen2.py` and
`language_model/qwen2/modeling_qwen2.py` (`moe_function`); key names `model.vision_tower.*`,
`model.layers.N.{self_attn.moe_{q,k,v,o}_proj, moe_mlp, moe_input_layernorm, moe_post_attention_layernorm}`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import (
    ALL_ATTENTION_FUNCTIONS,
    Qwen2Attention,
    Qwen2DecoderLayer,
    Qwen2MLP,
    Qwen2RMSNorm,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from runtime.errors import CheckpointError
from runtime.preprocess import CLIP_MEAN, CLIP_STD, PreprocessSpec

from .vlm import VisionLanguageModel

MOE_PARTS = {"layernorm", "self_attn", "mlp"}  # what EVE-7B-HD-v2.0 was trained with (`--moe_part`)


class EVEv2Config(Qwen2Config):
    """Qwen2Config plus EVEv2's fields (model_type "eve-qwen2", upstream's EVEQwen2Config).

    `max_size`, `patch_stride` and `dense_stride` live in the published preprocessor directory (`mm_vision_tower`,
    `openai/eve-anyratio-res{800,1600}-patch16`); Aerie also writes them here so a checkpoint is self-contained,
    and falls back to the published values (800 or 1600 by the tower name, 16, 2).
    """

    model_type = "eve-qwen2"

    def __init__(
        self,
        mm_vision_tower: str = "openai/eve-anyratio-res1600-patch16",
        mm_hidden_size: int = 1024,
        add_moe: bool = True,
        moe_part: str = "layernorm-self_attn-mlp",
        max_size: int | None = None,
        patch_stride: int = 16,
        dense_stride: int = 2,
        **kwargs,
    ):
        self.mm_vision_tower = mm_vision_tower
        self.mm_hidden_size = mm_hidden_size
        self.add_moe = add_moe
        self.moe_part = moe_part
        self.max_size = max_size or (800 if "res800" in (mm_vision_tower or "") else 1600)
        self.patch_stride = patch_stride
        self.dense_stride = dense_stride
        super().__init__(**kwargs)


def check_moe(config: EVEv2Config) -> None:
    """Aerie builds the published layout: image copies of the norms, the attention and the MLP in every layer."""
    parts = set((config.moe_part or "").split("-"))
    if not config.add_moe or parts != MOE_PARTS:
        raise CheckpointError(f"config.json: add_moe {config.add_moe!r}, moe_part {config.moe_part!r}: Aerie builds "
                              "EVEv2 with add_moe true and moe_part 'layernorm-self_attn-mlp' (the released model's)")


def route(image: torch.Tensor, text_fn: Callable, image_fn: Callable, x: torch.Tensor) -> torch.Tensor:
    """Upstream's moe_function with a hard 0/1 mask: image positions through `image_fn`, the rest `text_fn`."""
    return torch.where(image, image_fn(x), text_fn(x))


class EVEv2Attention(Qwen2Attention):
    """Qwen2 attention with image copies of q/k/v/o; one cache and one attention over all positions."""

    def __init__(self, config: EVEv2Config, layer_idx: int):
        super().__init__(config, layer_idx)
        heads, kv_heads, hidden = config.num_attention_heads, config.num_key_value_heads, config.hidden_size
        self.moe_q_proj = nn.Linear(hidden, heads * self.head_dim, bias=True)
        self.moe_k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=True)
        self.moe_v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=True)
        self.moe_o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None, past_key_values=None, image: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As Hugging Face's Qwen2Attention.forward, the four projections routed by `image` [batch, seq, 1]."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = route(image, self.q_proj, self.moe_q_proj, hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = route(image, self.k_proj, self.moe_k_proj, hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = route(image, self.v_proj, self.moe_v_proj, hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                    eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling,
            sliding_window=self.sliding_window, **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return route(image, self.o_proj, self.moe_o_proj, attn_output), attn_weights


class EVEv2DecoderLayer(Qwen2DecoderLayer):
    def __init__(self, config: EVEv2Config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.self_attn = EVEv2Attention(config, layer_idx)
        self.moe_mlp = Qwen2MLP(config)
        self.moe_input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.moe_post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values=None, use_cache: bool | None = False,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                visual_token_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if visual_token_mask is None:
            raise ValueError("EVEv2 routes every position by modality: pass visual_token_mask (bool [batch, seq], "
                             "True at image positions)")
        image = visual_token_mask.to(torch.bool, copy=False)[..., None]
        residual = hidden_states
        hidden_states = route(image, self.input_layernorm, self.moe_input_layernorm, hidden_states)
        hidden_states, _ = self.self_attn(
            hidden_states=hidden_states, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=use_cache, position_embeddings=position_embeddings,
            image=image, **kwargs,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = route(image, self.post_attention_layernorm, self.moe_post_attention_layernorm, hidden_states)
        return residual + route(image, self.mlp, self.moe_mlp, hidden_states)


@torch.no_grad()
def copy_text_weights_into_image_copies(model: nn.Module) -> None:
    """Upstream's `0_notrain_copy_llm_weight_into_moe.sh`: every `moe_*` weight starts as its text twin, so
    image positions first go through the LLM as it is and their copies only then drift apart."""
    params = dict(model.named_parameters())
    for name, param in params.items():
        if ".moe_" in name:
            param.copy_(params[name.replace(".moe_", ".", 1)])


class PatchEmbedding(nn.Module):
    """EVEv2's VisionTokenizer: pixels -> [CLS] row_1 [SPL] ... row_h [SPL], already at the LLM's width."""

    def __init__(self, dim: int, hidden: int, patch_stride: int, dense_stride: int):
        super().__init__()
        self.patch_embedding = nn.Sequential(
            nn.Conv2d(3, dim, kernel_size=patch_stride, stride=patch_stride),
            nn.GELU(),
            nn.Conv2d(dim, hidden, kernel_size=dense_stride, stride=dense_stride),
        )
        self.class_embedding = nn.Parameter(torch.randn(hidden))
        self.split_embedding = nn.Parameter(torch.randn(hidden))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One image [1, 3, H, W] -> [1 + h*(w+1), hidden] with h = H / 32, w = W / 32."""
        # The dtype of the layer's own weight (models/precision.py casts a block's weights as its forward starts).
        patches = self.patch_embedding(pixel_values.to(self.class_embedding.dtype))[0]  # [hidden, h, w]
        split = self.split_embedding[:, None, None].expand(-1, patches.shape[1], 1)
        rows = torch.cat([patches, split], dim=-1).flatten(1).transpose(0, 1)
        return torch.cat([self.class_embedding[None], rows], dim=0)


class EVEv2ForCausalLM(Qwen2ForCausalLM, VisionLanguageModel):
    family = "evev2"
    chat_template = "eve_qwen2"
    architecture = "EVEQwen2ForCausalLM"
    # The decoder takes `visual_token_mask` (True at image positions) with its inputs_embeds (docs/design.md).
    routes_by_modality = True

    def __init__(self, config: EVEv2Config):
        check_moe(config)
        super().__init__(config)
        self.model.layers = nn.ModuleList(EVEv2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.model.vision_tower = PatchEmbedding(config.mm_hidden_size, config.hidden_size, config.patch_stride,
                                                 config.dense_stride)
        self.post_init()  # Hugging Face's initialisation for the layers replaced above, as for the ones they replace

    @property
    def decoder(self) -> nn.Module:
        return self

    def preprocess_spec(self, **overrides) -> PreprocessSpec:
        c = self.config
        fields = dict(kind="eve_anyratio", image_size=c.max_size, mean=CLIP_MEAN, std=CLIP_STD,
                      patch_stride=c.patch_stride, conv_stride=c.dense_stride)
        return PreprocessSpec(**{**fields, **overrides})

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One image [1, 3, H, W] -> [1, 1 + h*(w+1), hidden]."""
        return self.model.vision_tower(pixel_values)[None]
