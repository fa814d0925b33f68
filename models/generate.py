"""The reference generate(): the PyTorch oracle's token loop, with the runtime's own sampler."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from runtime.sampling import SamplingParams, make_rng, sample_token


@torch.no_grad()
def generate(
    model,
    input_ids: Sequence[int] | np.ndarray,
    image_table: torch.Tensor | None,
    params: SamplingParams,
    eos_ids: Iterable[int],
    should_stop: Callable[[list[int]], bool] | None = None,
) -> list[int]:
    """New token ids after the prompt: prefill, then one token at a time with the KV cache.

    Stops at an EOS id (not returned), after `params.max_new_tokens`, or when `should_stop(tokens)`.
    """
    decoder = model.decoder
    device = next(decoder.parameters()).device
    eos = set(eos_ids)
    ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))[None].to(device)
    cache = DynamicCache(config=decoder.config)
    logits = decoder(inputs_embeds=model.embed(ids, image_table), past_key_values=cache, use_cache=True).logits[0, -1]
    rng = None if params.greedy else make_rng(params.seed)
    seen = list(ids[0].tolist())
    out: list[int] = []
    for _ in range(params.max_new_tokens):
        penalized = np.asarray(seen) if params.repetition_penalty != 1.0 else None
        token = sample_token(logits.float().cpu().numpy(), params, rng, penalized)
        if token in eos:
            break
        out.append(token)
        seen.append(token)
        if should_stop is not None and should_stop(out):
            break
        step = model.embed(torch.tensor([[token]], device=device), None)
        logits = decoder(inputs_embeds=step, past_key_values=cache, use_cache=True).logits[0, -1]
    return out
