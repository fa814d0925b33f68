"""From a conversation and its images to prompt ids: the one path every engine and the oracle share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from .templates import IMAGE_PLACEHOLDER, LITERAL_PLACEHOLDER, ChatTemplate, Turn, number_images, place_images
from .tokenizer import CONTENT_END, CONTENT_START, Tokenizer


@dataclass(frozen=True)
class RawPrompt:
    """Text the model continues as written, without the chat template or images (vLLM's `LLM.generate`, the
    server's /v1/completions). It is all message text: a special token's string in it is tokenized as text."""

    text: str


Conversation = Union[Sequence[Turn], RawPrompt]


def attach_images(turns: Sequence[Turn], n_images: int) -> list[Turn]:
    """Without `<image>` placeholders, put `<image>\\n` for every image before the last user message
    (the references' layout for a question about an image); with them, check the count. Only user turns
    place images: an `<image>` an assistant wrote is text."""
    turns = [(role, text.replace(IMAGE_PLACEHOLDER, LITERAL_PLACEHOLDER) if role == "assistant" else text)
             for role, text in turns]
    placed = sum(text.count(IMAGE_PLACEHOLDER) for _, text in turns)
    if placed == 0 and n_images:
        last_user = max(i for i, (role, _) in enumerate(turns) if role == "user")
        turns[last_user] = ("user", place_images(turns[last_user][1], n_images))
    elif placed != n_images:
        raise ValueError(f"the conversation has {placed} <image> placeholders for {n_images} images")
    return turns


def marked(text: str) -> str:
    """Message text between the marks that make the tokenizer read it as text (runtime/tokenizer.py)."""
    return CONTENT_START + text.replace(CONTENT_START, "").replace(CONTENT_END, "") + CONTENT_END


def prompt_ids(
    tokenizer: Tokenizer,
    template: ChatTemplate,
    turns: Conversation,
    image_tokens: Sequence[int],
    vocab_size: int,
) -> np.ndarray:
    """Token ids of the templated conversation, ending where the assistant's answer starts (of a RawPrompt: its
    text after BOS). The messages' text can't make special tokens (runtime/tokenizer.py): only the template's
    own strings do."""
    if isinstance(turns, RawPrompt):
        if image_tokens:
            raise ValueError("a raw prompt takes no images; send a conversation")
        return tokenizer.encode_prompt(marked(turns.text.replace(IMAGE_PLACEHOLDER, LITERAL_PLACEHOLDER)))
    turns = number_images(template, attach_images(turns, len(image_tokens)))
    text = template.render([(role, marked(text)) for role, text in turns], add_generation_prompt=True)
    return tokenizer.encode_prompt(text, image_tokens, vocab_size, template.image_start, template.image_end)
