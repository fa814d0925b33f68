"""Token ids and loss labels of a conversation, tokenized exactly as the runtime prompts it.

The references mask by counting tokens of each round (`preprocess_v1`, `preprocess_llama_3`,
`preprocess_plain`, InternVL's chatml): the system prompt, every human turn and every role header get
-100; each assistant reply and the stop token that ends it (`</s>`, `<|eot_id|>`, `<|im_end|>`, the
plain "\\n") are supervised; chatml's newline after `<|im_end|>` is not. Here the same split comes from
the runtime's own renderer and tokenizer: a reply's tokens start where the generation prompt for that
turn ends (`template.render(..., add_generation_prompt=True)`, the serving prompt) and end after its
stop string, so training sees the very ids serving feeds. When a prefix does not tokenize as a prefix
of the whole (the references' "tokenization mismatch"), every label of the sample is -100.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from runtime.templates import IMAGE_PLACEHOLDER, ChatTemplate, Turn, number_images
from runtime.tokenizer import Tokenizer

IGNORE_INDEX = -100
log = logging.getLogger("aerie.training")


@dataclass
class Tokenized:
    input_ids: np.ndarray  # int64 [L]; image rows are ids >= vocab_size
    labels: np.ndarray  # int64 [L]; IGNORE_INDEX where no loss
    mismatch: bool = False


def template_turns(template: ChatTemplate, turns: Sequence[Turn]) -> list[Turn]:
    """The turns as the template trains on them: several images named where it names them (number_images);
    `plain` (stage-1 alignment) keeps only the image and the first answer, as preprocess_plain."""
    if template.style != "plain":
        return number_images(template, turns)
    image = IMAGE_PLACEHOLDER if IMAGE_PLACEHOLDER in turns[0][1] else ""
    return [("user", image), ("assistant", turns[1][1])]


def tokenize_conversation(
    tokenizer: Tokenizer,
    template: ChatTemplate,
    turns: Sequence[Turn],
    image_tokens: Sequence[int],
    vocab_size: int,
) -> Tokenized:
    """Ids of the whole conversation and labels that supervise only the assistant replies (+ stop)."""
    turns = template_turns(template, turns)
    stop = template.stop[0]

    def encode(text: str) -> np.ndarray:
        return tokenizer.encode_prompt(text, image_tokens, vocab_size, template.image_start, template.image_end)

    ids = encode(template.render(turns, add_generation_prompt=False))
    labels = np.full_like(ids, IGNORE_INDEX)
    for k in range(1, len(turns), 2):
        prompt = template.render(turns[:k], add_generation_prompt=True)
        answered = template.render(turns[: k + 1], add_generation_prompt=False)
        cut = answered.rfind(stop, len(prompt))
        if cut < 0:
            raise ValueError(f"template {template.name}: the answer of turn {k} does not end with {stop!r}")
        start_ids, end_ids = encode(prompt), encode(answered[: cut + len(stop)])
        start, end = len(start_ids), len(end_ids)
        if end > len(ids) or not (np.array_equal(ids[:end], end_ids) and np.array_equal(end_ids[:start], start_ids)):
            log.warning("tokenization mismatch in turn %d (template %s); the sample is not supervised", k, template.name)
            return Tokenized(ids, np.full_like(ids, IGNORE_INDEX), mismatch=True)
        labels[start:end] = ids[start:end]
    return Tokenized(ids, labels)
