"""Composing a full-scale starting checkpoint from pretrained parts: the LLM and vision weights land under the
published keys, the new modules start fresh (EVEv2's image copies as the LLM's weights), and the result trains."""

from __future__ import annotations

import torch
from transformers import (CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          SiglipVisionConfig, SiglipVisionModel)

from models.checkpoint import load_model
from models.tokenizer_build import save_tokenizer, tokenizer_config, train_tiny_tokenizer
from training.compose import compose
from training.trainer import TRAINING_ONLY

SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)


def test_eve_from_vicuna_and_clip(tmp_path):
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=300, num_key_value_heads=4, **SMALL))
    llm.save_pretrained(tmp_path / "llm")
    save_tokenizer(train_tiny_tokenizer(["a b c"], "llama", 100), tokenizer_config("llama"), tmp_path / "llm")
    clip = CLIPModel(CLIPConfig(vision_config=dict(image_size=56, patch_size=14, **SMALL), text_config=dict(**SMALL)))
    clip.save_pretrained(tmp_path / "clip")
    eve_fields = dict(mm_hidden_size=128, image_size=112, image_size_clip=56, pal_layer_rate=1, pal_num_heads=4)
    out = compose("eve", tmp_path / "llm", tmp_path / "eve", tmp_path / "clip", eve_fields)
    model = load_model(out, training=True)
    state = model.state_dict()
    torch.testing.assert_close(state["model.layers.1.mlp.down_proj.weight"], llm.state_dict()["model.layers.1.mlp.down_proj.weight"])
    torch.testing.assert_close(state["lm_head.weight"], llm.state_dict()["lm_head.weight"])
    teacher = clip.vision_model.state_dict()
    torch.testing.assert_close(state["model.vision_clip.backbone.vision_model.encoder.layers.1.mlp.fc2.weight"],
                               teacher["encoder.layers.1.mlp.fc2.weight"])
    assert (out / "tokenizer.json").is_file() and model.config.image_size == 112
    # Inference loads it too (the teacher and aligner are training-only).
    assert load_model(out).family == "eve"


def test_eve_without_a_teacher_starts_it_fresh(tmp_path):
    LlamaForCausalLM(LlamaConfig(vocab_size=300, num_key_value_heads=4, **SMALL)).save_pretrained(tmp_path / "llm")
    fields = dict(mm_hidden_size=128, image_size=112, image_size_clip=56, pal_layer_rate=1,
                  clip_vision_config=dict(image_size=56, patch_size=14, **SMALL))
    out = compose("eve", tmp_path / "llm", tmp_path / "eve", None, fields)
    assert load_model(out, training=True, allow_missing=TRAINING_ONLY).family == "eve"


def test_eagle2_5_from_qwen2_and_siglip(tmp_path):
    torch.manual_seed(1)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, num_key_value_heads=2, tie_word_embeddings=True, **SMALL))
    llm.save_pretrained(tmp_path / "llm")
    siglip = SiglipVisionModel(SiglipVisionConfig(image_size=56, patch_size=14, **SMALL))
    siglip.save_pretrained(tmp_path / "siglip")
    out = compose("eagle2_5", tmp_path / "llm", tmp_path / "eagle", tmp_path / "siglip", {"force_image_size": 56})
    state = load_model(out).state_dict()
    torch.testing.assert_close(state["language_model.model.layers.0.self_attn.q_proj.weight"],
                               llm.state_dict()["model.layers.0.self_attn.q_proj.weight"])
    vision_key = next(k for k in siglip.state_dict() if k.endswith("encoder.layers.1.mlp.fc1.weight"))
    torch.testing.assert_close(state["vision_model.vision_model.encoder.layers.1.mlp.fc1.weight"], siglip.state_dict()[vision_key])


def test_evev2_from_qwen2_copies_the_llm_into_the_image_weights(tmp_path):
    torch.manual_seed(2)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, num_key_value_heads=2, **SMALL))
    llm.save_pretrained(tmp_path / "llm")
    out = compose("evev2", tmp_path / "llm", tmp_path / "evev2", None, {"mm_hidden_size": 128, "max_size": 128})
    model = load_model(out)
    state, pretrained = model.state_dict(), llm.state_dict()
    assert model.family == "evev2" and model.config.max_size == 128
    for key in ("model.layers.1.self_attn.q_proj.bias", "model.layers.0.mlp.down_proj.weight",
                "model.layers.1.post_attention_layernorm.weight"):
        torch.testing.assert_close(state[key], pretrained[key])
        torch.testing.assert_close(state[key.replace(".q_proj", ".moe_q_proj").replace(".mlp", ".moe_mlp")
                                         .replace(".post_attention", ".moe_post_attention")], pretrained[key])
    torch.testing.assert_close(state["lm_head.weight"], pretrained["lm_head.weight"])
