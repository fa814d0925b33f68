"""The PyTorch side of the decoder parity tests: logits of a prompt and of the greedy tokens after it."""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from models.engines import modality_inputs


@torch.no_grad()
def torch_greedy_logits(model, input_ids: np.ndarray, image_table: np.ndarray | None, steps: int) -> list[np.ndarray]:
    """[logits of the prompt's last token, then of each of `steps` greedy tokens fed back], each float32 [vocab]."""
    decoder = model.decoder
    cache = DynamicCache(config=decoder.config)
    table = None if image_table is None else torch.from_numpy(image_table)
    embeds = model.embed(torch.from_numpy(np.asarray(input_ids, np.int64))[None], table)
    vocab = model.text_vocab_size()
    out = [decoder(inputs_embeds=embeds, past_key_values=cache, use_cache=True,
                   **modality_inputs(decoder, input_ids, vocab)).logits[0, -1].float().numpy()]
    for _ in range(steps):
        token = torch.tensor([[int(out[-1].argmax())]])
        step = decoder(inputs_embeds=model.embed(token, None), past_key_values=cache, use_cache=True,
                       **modality_inputs(decoder, token.numpy(), vocab))
        out.append(step.logits[0, -1].float().numpy())
    return out


def prompt_with_image(vocab_size: int, hidden_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A prompt of text ids around 6 image ids, and a random 6-row image table."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((6, hidden_size)).astype(np.float32)
    ids = np.concatenate([rng.integers(3, vocab_size, 5), vocab_size + np.arange(6), rng.integers(3, vocab_size, 4)])
    return ids.astype(np.int64), table
