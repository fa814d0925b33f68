"""Calibration data with the images in it: each sample is a real prompt (chat template, question, answer)
whose image rows come from the model's own vision tower, spliced in at the image ids exactly as at
inference (docs/design.md), both computed in float32 by the PyTorch engines (models/engines.py). The decoder is
calibrated on these `inputs_embeds`, not on text alone, so the activation ranges and AWQ's channel statistics
include the image rows'.

Data: any LLaVA-format JSON (a list of {id, image, conversations}); the first human/gpt pair of each
record is used. Samples are taken evenly across the file, so a file sorted by category still gives them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.engines import TorchDecoder, TorchVision
from runtime.errors import AerieError
from runtime.eval.progress import Progress
from runtime.eval.questions import BenchmarkDataError, Question
from runtime.eval.readers import read_llava_conversations
from runtime.image_io import load_image
from runtime.preprocess import preprocess_image
from runtime.prompt import attach_images
from runtime.templates import get_template
from runtime.tokenizer import Tokenizer

from .errors import QuantizationError


@dataclass
class CalibrationSet:
    """`inputs_embeds` [1, seq, hidden] per sample, how many of its positions are image rows, and the
    preprocessed pixels of its images (ImageInput.trimmed(): what the vision graph takes) to calibrate it."""

    embeds: list[torch.Tensor]
    image_positions: list[int]
    pixels: list[np.ndarray]
    source: str

    def __len__(self) -> int:
        return len(self.embeds)

    def describe(self) -> dict:
        lengths = [e.shape[1] for e in self.embeds]
        return {"data": self.source, "samples": len(self), "tokens": int(sum(lengths)),
                "image_tokens": int(sum(self.image_positions)), "images": len(self.pixels),
                "max_length": int(max(lengths))}


def spread(items: list, n: int) -> list:
    """`n` items evenly spaced over the list (all of them when it has no more)."""
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def sample_ids(model, tokenizer: Tokenizer, question: Question, image_tokens: int | None) -> np.ndarray:
    """The whole exchange (question and answer) as ids, image ids where the image goes."""
    template = get_template(model.chat_template)
    turns = [("user", question.text), ("assistant", question.answers[0])]
    counts = [image_tokens] if image_tokens is not None else []
    text = template.render(attach_images(turns, len(counts)), add_generation_prompt=False)
    return tokenizer.encode_prompt(text, counts, model.text_vocab_size(), template.image_start, template.image_end)


@torch.no_grad()
def calibration_set(model, tokenizer: Tokenizer, data: str | Path, images: str | Path | None = None,
                    num_samples: int = 64, max_length: int = 512, progress: bool = True,
                    text_only: bool = False) -> CalibrationSet:
    """Embeddings of `num_samples` records of a LLaVA-format JSON file, each cut to `max_length` positions.
    `text_only` leaves the image rows out of the decoder's samples (what other toolchains do; kept to measure
    the difference, bench/quant.py --text-calibration); the vision graph still gets the images."""
    if num_samples < 1 or max_length < 2:
        raise QuantizationError(f"calibration needs at least 1 sample of 2 tokens, got {num_samples} of {max_length}")
    try:
        questions = spread(read_llava_conversations(Path(data), Path(images) if images else None), num_samples)
    except BenchmarkDataError as e:
        raise QuantizationError(f"calibration data: {e}") from None
    spec = model.preprocess_spec()
    vision, decoder = TorchVision(model), TorchDecoder(model.decoder)
    embeds, image_positions, pixels = [], [], []
    bar = Progress(len(questions), label="calibration data", enabled=progress)
    for question in questions:
        table = None
        if question.image is not None:
            try:
                inputs = preprocess_image(load_image(question.image), spec)
            except AerieError as e:
                raise QuantizationError(f"calibration sample {question.question_id}: {e}") from None
            table = vision.encode(inputs.trimmed())
            pixels.append(inputs.trimmed())
        if text_only:
            table = None
        ids = sample_ids(model, tokenizer, question, None if table is None else table.shape[0])[:max_length]
        embeds.append(decoder.embed(ids, table).float())
        image_positions.append(int((ids >= model.text_vocab_size()).sum()))
        bar.advance()
    bar.close()
    return CalibrationSet(embeds, image_positions, pixels, str(data))
