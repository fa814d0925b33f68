"""Tiny configurations of the real architectures: the same module tree and key names, small widths.

Every linear input size is a multiple of 128 (INT4-AWQ quantizes in groups of 128 and refuses others).
"""

from __future__ import annotations


def tiny_llama(vocab_size: int, **overrides) -> dict:
    fields = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    )
    return {**fields, **overrides}


def tiny_eve_config(vocab_size: int, bos_token_id: int = 1, eos_token_id: int = 2, **overrides) -> dict:
    """EVE with a 128-wide PEL, canvas 112 (teacher grid 56 / 14 = 4), Llama 2 x 128."""
    fields = dict(
        model_type="eve",
        **tiny_llama(vocab_size),
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=0,
        mm_vision_tower="aerie/eve-tiny-112", mm_hidden_size=128, image_size=112, image_size_clip=56,
        patch_stride=14, conv_stride=2, pel_num_heads=8, pal_layer_rate=1, pal_num_heads=4,
        clip_vision_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                image_size=56, patch_size=14, hidden_act="quick_gelu"),
    )
    return {**fields, **overrides}


def tiny_evev2_config(vocab_size: int, eos_token_id: int = 2, **overrides) -> dict:
    """EVEv2 with a 128-wide patch embedding at the published strides (16, 2) on a 128² area (4x4 tokens for a
    square), Qwen2 2 x 128 with image copies of every layer's norms, attention and MLP."""
    fields = dict(
        model_type="eve-qwen2",
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=False, eos_token_id=eos_token_id,
        mm_vision_tower="aerie/eve-anyratio-res128-patch16", mm_hidden_size=128, max_size=128, patch_stride=16,
        dense_stride=2, add_moe=True, moe_part="layernorm-self_attn-mlp",
    )
    return {**fields, **overrides}


def tiny_eagle2_5_config(vocab_size: int, eos_token_id: int = 2, **overrides) -> dict:
    """Eagle2.5 with a 2-layer SigLIP on 56² tiles (4 tokens per tile after the pixel shuffle), Qwen2 2 x 128."""
    fields = dict(
        model_type="eagle_2_5_vl",
        vision_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           image_size=56, patch_size=14),
        text_config=dict(
            architectures=["Qwen2ForCausalLM"], vocab_size=vocab_size, hidden_size=128, intermediate_size=256,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, eos_token_id=eos_token_id,
        ),
        force_image_size=56, select_layer=-1, downsample_ratio=0.5, min_dynamic_tiles=1, max_dynamic_tiles=6,
        use_thumbnail=True,
    )
    return {**fields, **overrides}


def tiny_eagle2_config(vocab_size: int, eos_token_id: int = 2, **overrides) -> dict:
    """Eagle2 (config.json as the Eagle2-1B/2B release lays it out) with the tiny Eagle2.5's tower and decoder."""
    tiny = tiny_eagle2_5_config(vocab_size, eos_token_id)
    fields = dict(
        model_type="eagle_chat",
        vision_config=dict(tiny["vision_config"], model_type="siglip_vision_model"),
        llm_config=tiny["text_config"],
        force_image_size=56, select_layer=-1, downsample_ratio=0.5, template="qwen2-chat", dynamic_image_size=True,
        use_thumbnail=True, min_dynamic_patch=1, max_dynamic_patch=6,
    )
    return {**fields, **overrides}


def tiny_eagle2_9b_config(vocab_size: int, eos_token_id: int = 2, moe_version_type: str | None = None,
                          vision_path: str = "MOB:convnext-1024;palisiglip", **overrides) -> dict:
    """Eagle2-9B's layout (the MOB tower: SigLIP and ConvNeXt side by side) on 56² tiles: SigLIP 4x4 tokens,
    ConvNeXt 128 wide at stride 32 (128² -> 4x4 on the grid, or 64² -> 2x2 appended after the shuffled SigLIP
    tokens with convnext_512_siglip_448); 4 tokens per tile either way."""
    tiny = tiny_eagle2_config(vocab_size, eos_token_id)
    vision = dict(
        model_type="MOB", vision_path=vision_path, grid_size=4, moe_version_type=moe_version_type,
        convnext_img_size=64 if moe_version_type == "convnext_512_siglip_448" else 128, siglip_img_size=56,
        normalize_type="siglip", mm_vision_select_layer=-1, siglip_vision_config=tiny["vision_config"],
        convnext_config=dict(depths=[1, 1, 1, 1], dims=[32, 32, 64, 128]),
    )
    return {**tiny, "vision_config": vision, **overrides}


def tiny_eagle_v1_config(vocab_size: int, variant: str = "x5", bos_token_id: int = 1, eos_token_id: int = 2,
                         **overrides) -> dict:
    """Eagle-X5 (or X4: no SAM) on 128² images and a 4x4 grid (16 tokens), every expert 128 wide, Llama 2 x 128.

    Each expert keeps the published design at its small scale: CLIP 42² -> 3x3 resized up to 4x4; ConvNeXt at
    stride 32; SAM 8x8 with 3x3 windows (padded, like 14 on 64) unshuffled to 4x4; EVA 8x8 with 4x4 windows
    in two blocks of three and a 6x6 pretraining position grid; Pix2Struct with max_patches 32 -> 5x5 -> 4x4.
    mm_hidden is 768 (X5) or 640 (X4).
    """
    from models.eagle_v1.config import X4_TOWER, X5_TOWER

    towers = {"x5": X5_TOWER, "x4": X4_TOWER}
    if variant not in towers:
        raise ValueError(f"variant must be 'x5' or 'x4', got {variant!r}")
    experts = dict(
        clip=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  image_size=42, patch_size=14),
        convnext=dict(depths=[1, 1, 2, 1], dims=[128, 128, 128, 256]),
        sam=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, mlp_dim=256, output_channels=32,
                 window_size=3, global_attn_indexes=[1]),
        det=dict(embed_dim=128, depth=3, num_heads=4, window_size=4, window_block_indexes=[0, 1], mlp_ratio=3.0,
                 pretrain_img_size=96),
        pix2struct=dict(hidden_size=128, d_ff=256, d_kv=32, num_attention_heads=4, num_hidden_layers=2, seq_len=64,
                        max_patches=32),
    )
    if variant == "x4":
        del experts["sam"]
    fields = dict(
        model_type="eagle_llama",
        **tiny_llama(vocab_size),
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=0,
        mm_vision_tower=towers[variant], image_size=128, grid_size=4, vision_experts=experts,
    )
    return {**fields, **overrides}
