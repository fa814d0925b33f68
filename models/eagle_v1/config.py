"""EagleConfig: LlamaConfig plus the multimodal fields the Eagle v1 code writes into config.json
(`eagle/model/language_model/eagle_llama.py`, `eagle_arch.py`, `train.py`), model_type "eagle_llama".

The published checkpoints hard-code the experts' architectures (`multi_backbone_channel_concatenation_encoder.py`);
Aerie writes three optional fields of its own so a tiny model of the same design is self-describing:
`image_size` and `grid_size` (1024 and 32 in the published code), and `vision_experts`, overrides of each
expert's architecture by kind. A published config.json has none of them and gets the published values.
"""

from __future__ import annotations

from transformers import LlamaConfig

X5_TOWER = "clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024"
X4_TOWER = "clip-448;convnext-1024;det-1024;pix2struct-1024"
LLAMA3_BOS = 128000  # <|begin_of_text|>: a Llama-3 tokenizer means the llama3 template
YI_VOCAB = 64000  # Yi-34B's vocabulary: the 34B "Plus" models were trained with yi_34b_chatml_direct


class EagleConfig(LlamaConfig):
    model_type = "eagle_llama"

    def __init__(
        self,
        mm_vision_tower: str = X5_TOWER,
        mm_hidden_size: int | None = None,
        mm_projector_type: str = "mlp2x_gelu",
        use_mm_proj: bool = True,
        mm_vision_select_layer: int = -2,
        mm_vision_select_feature: str = "patch",
        mm_patch_merge_type: str = "flat",
        image_aspect_ratio: str = "pad",
        mm_use_im_start_end: bool = False,
        mm_use_im_patch_token: bool = False,
        tune_mm_mlp_adapter: bool = False,
        freeze_mm_mlp_adapter: bool = False,
        mm_projector_lr: float | None = None,
        tokenizer_padding_side: str = "right",
        tokenizer_model_max_length: int = 2048,
        image_size: int = 1024,
        grid_size: int = 32,
        vision_experts: dict[str, dict] | None = None,
        conv_mode: str | None = None,
        **kwargs,
    ):
        self.mm_vision_tower = mm_vision_tower
        self.mm_hidden_size = mm_hidden_size
        self.mm_projector_type = mm_projector_type
        self.use_mm_proj = use_mm_proj
        self.mm_vision_select_layer = mm_vision_select_layer
        self.mm_vision_select_feature = mm_vision_select_feature
        self.mm_patch_merge_type = mm_patch_merge_type
        self.image_aspect_ratio = image_aspect_ratio
        self.mm_use_im_start_end = mm_use_im_start_end
        self.mm_use_im_patch_token = mm_use_im_patch_token
        self.tune_mm_mlp_adapter = tune_mm_mlp_adapter
        self.freeze_mm_mlp_adapter = freeze_mm_mlp_adapter
        self.mm_projector_lr = mm_projector_lr
        self.tokenizer_padding_side = tokenizer_padding_side
        self.tokenizer_model_max_length = tokenizer_model_max_length
        self.image_size = image_size
        self.grid_size = grid_size
        self.vision_experts = vision_experts
        self.conv_mode = conv_mode
        super().__init__(**kwargs)

    @property
    def template_name(self) -> str:
        """The chat template: `conv_mode` if set, else llama3 for a Llama-3 vocabulary, yi_34b_chatml_direct for
        Yi's, and vicuna_v1 otherwise (the published config.json does not name it; the README runs the 7B/13B
        models with vicuna_v1)."""
        if self.conv_mode:
            return self.conv_mode
        if self.bos_token_id == LLAMA3_BOS:
            return "llama3"
        return "yi_34b_chatml_direct" if self.vocab_size == YI_VOCAB else "vicuna_v1"
