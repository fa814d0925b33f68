"""What every family's model offers the rest of Aerie: images in, embedding rows out, a decoder that
takes `inputs_embeds`, and the splice of DESIGN.md (ids >= vocab_size address the image table)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from runtime.preprocess import ImageInput, PreprocessSpec


def embed_with_images(embed_tokens: nn.Embedding, input_ids: torch.Tensor, image_table: torch.Tensor | None) -> torch.Tensor:
    """inputs_embeds for ids [..., seq]: ids below vocab_size from the token table, the rest from image_table.

    No data-dependent Python branches, so it exports to ONNX as Gather + Where.
    """
    vocab_size = embed_tokens.num_embeddings
    is_image = input_ids >= vocab_size
    embeds = embed_tokens(torch.where(is_image, torch.zeros_like(input_ids), input_ids))
    if image_table is None:
        return embeds
    rows = torch.where(is_image, input_ids - vocab_size, torch.zeros_like(input_ids))
    return torch.where(is_image.unsqueeze(-1), image_table.to(embeds.dtype)[rows], embeds)


class VisionLanguageModel:
    """Mixin with the interface of the family models (an nn.Module subclass mixes it in): subclasses set
    `family` and `chat_template` and implement `encode_images`, `decoder` and `preprocess_spec`."""

    family: str = ""
    chat_template: str = ""

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels (one family-specific batch) -> projected embeddings [n, tokens, hidden]."""
        raise NotImplementedError

    @property
    def decoder(self) -> nn.Module:
        """The Hugging Face causal LM that takes inputs_embeds (LlamaForCausalLM / Qwen2ForCausalLM)."""
        raise NotImplementedError

    def preprocess_spec(self, **overrides) -> PreprocessSpec:
        raise NotImplementedError

    def vision_parameters(self) -> list[nn.Parameter]:
        """The weights `encode_images` uses: everything but the language model's layers, embeddings, norm and head."""
        decoder = self.decoder
        text = {id(p) for m in (decoder.model.layers, decoder.model.embed_tokens, decoder.model.norm, decoder.lm_head)
                for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in text]  # type: ignore[attr-defined]

    def text_vocab_size(self) -> int:
        """Rows of the token-embedding table: image ids start here."""
        return self.decoder.get_input_embeddings().num_embeddings

    def text_hidden_size(self) -> int:
        return self.decoder.get_input_embeddings().embedding_dim

    def image_table(self, images: Sequence[ImageInput]) -> torch.Tensor | None:
        """All images of a prompt as one table [sum of tokens, hidden], in prompt order."""
        if not images:
            return None
        param = next(self.parameters())  # type: ignore[attr-defined]
        rows = []
        for image in images:
            pixels = torch.from_numpy(image.trimmed()).to(param.device, param.dtype)
            rows.append(self.encode_images(pixels).reshape(-1, self.text_hidden_size()))
            if rows[-1].shape[0] != image.num_tokens:
                raise RuntimeError(f"the vision tower gave {rows[-1].shape[0]} rows, preprocessing promised {image.num_tokens}")
        return torch.cat(rows)

    def embed(self, input_ids: torch.Tensor, image_table: torch.Tensor | None) -> torch.Tensor:
        return embed_with_images(self.decoder.get_input_embeddings(), input_ids, image_table)
