"""The starting checkpoint of a from-scratch run: a tokenizer trained on the data's text and a randomly
initialised model of a `models.tiny` configuration, written as a Hugging Face directory."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import torch

from models import tiny
from models.checkpoint import build_model, save_model
from models.evev2 import copy_text_weights_into_image_copies
from models.tokenizer_build import save_tokenizer, tokenizer_config, train_tiny_tokenizer

from runtime.templates import IMAGE_PLACEHOLDER, ChatTemplate

from .llava import Record
from .masking import template_turns
from .recipes import RecipeError


def deep_update(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def rendered_corpus(data: Iterable[tuple[ChatTemplate, Iterable[Record]]]) -> list[str]:
    """The conversations as each stage's template renders them, so the template's fixed strings (system
    prompt, role names) become whole-word tokens as often as the model sees them."""
    return [
        template.render(template_turns(template, r.turns), add_generation_prompt=False).replace(IMAGE_PLACEHOLDER, "")
        for template, records in data
        for r in records
    ]


def model_config(spec: dict, vocab_size: int, token_id) -> dict:
    """The config.json dict: `spec["config"]` names a models.tiny function; `spec["overrides"]` deep-merges."""
    name = spec.get("config", "")
    factory = getattr(tiny, name, None)
    if factory is None or not name.startswith("tiny_"):
        raise RecipeError(f"[model] config {name!r} is not a models.tiny configuration (e.g. tiny_eve_config)")
    if name in ("tiny_eve_config", "tiny_eagle_v1_config"):
        config = factory(vocab_size, bos_token_id=token_id("<s>"), eos_token_id=token_id("</s>"))
    elif name in ("tiny_eagle2_5_config", "tiny_eagle2_config", "tiny_evev2_config"):
        config = factory(vocab_size, eos_token_id=token_id("<|im_end|>"))
    else:
        config = factory(vocab_size)
    return deep_update(config, spec.get("overrides", {}))


def init_model(spec: dict, corpus: list[str], out: str | Path) -> Path:
    """Write tokenizer (trained on `corpus`) + random model into `out`; same inputs, same files. With
    `spec["copy_llm_into_image_copies"]`, EVEv2's image copies start equal to the decoder's text weights."""
    out = Path(out)
    tok_spec = spec.get("tokenizer", {})
    style = tok_spec.get("style", "llama")
    tok = train_tiny_tokenizer(corpus, style, int(tok_spec.get("vocab_size", 512)))
    save_tokenizer(tok, tokenizer_config(style), out)

    def token_id(token: str) -> int:
        token_id = tok.token_to_id(token)
        if token_id is None:
            raise RecipeError(f"the {style} tokenizer has no {token!r}; choose the tokenizer style of this family")
        return token_id

    config = model_config(spec, tok.get_vocab_size(), token_id)
    torch.manual_seed(int(spec.get("seed", 0)))
    model = build_model(config, training=True)
    if spec.get("copy_llm_into_image_copies", False):
        copy_text_weights_into_image_copies(model)
    save_model(model, out)
    return out
