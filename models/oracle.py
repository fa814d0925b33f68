"""The PyTorch oracle as a pipeline: the same preprocessing, template, tokenizer and sampler as the
runtime, with the reference model doing the work. Engines are compared with this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from runtime.detokenize import TextStream, stop_token_ids
from runtime.image_io import ImageSource, load_image
from runtime.preprocess import ImageInput, preprocess_image
from runtime.prompt import prompt_ids
from runtime.sampling import SamplingParams
from runtime.templates import Turn, get_template
from runtime.tokenizer import Tokenizer

from .checkpoint import load_model
from .generate import generate


@dataclass
class OracleResult:
    text: str
    token_ids: list[int]
    prompt_ids: np.ndarray


class TorchPipeline:
    """`TorchPipeline(checkpoint_dir).generate("What colour is the square?", images=["a.png"])`."""

    def __init__(self, checkpoint: str | Path, dtype: torch.dtype = torch.float32,
                 tokenizer_dir: str | Path | None = None, device: str = "cpu", **spec_overrides):
        """`tokenizer_dir`: a converted tokenizer (models.tokenizer_build.convert_tokenizer) for checkpoints
        that ship no tokenizer.json the runtime can load. `device`: where the model runs ("cpu", "cuda")."""
        self.model = load_model(checkpoint, dtype=dtype).to(device).eval()
        self.tokenizer = Tokenizer.from_dir(tokenizer_dir or checkpoint)
        self.template = get_template(self.model.chat_template)
        self.spec = self.model.preprocess_spec(**spec_overrides)
        self.eos_ids = stop_token_ids(self.tokenizer, self.template)

    def preprocess(self, images: Sequence[ImageSource]) -> list[ImageInput]:
        return [preprocess_image(load_image(image), self.spec) for image in images]

    def prompt_ids(self, turns: Sequence[Turn], images: Sequence[ImageInput]) -> np.ndarray:
        return prompt_ids(self.tokenizer, self.template, turns, [i.num_tokens for i in images], self.model.text_vocab_size())

    @torch.no_grad()
    def run(self, prompt: str | Sequence[Turn], images: Sequence[ImageSource] = (),
            params: SamplingParams = SamplingParams()) -> OracleResult:
        turns = [("user", prompt)] if isinstance(prompt, str) else list(prompt)
        inputs = self.preprocess(images)
        ids = self.prompt_ids(turns, inputs)
        stream = TextStream(self.tokenizer, (*self.template.stop, *params.stop))

        def should_stop(tokens: list[int]) -> bool:
            stream.push(tokens[-1])
            return stream.stopped

        tokens = generate(self.model, ids, self.model.image_table(inputs), params, self.eos_ids, should_stop)
        stream.finish()
        return OracleResult(stream.text, tokens, ids)

    def generate(self, prompt: str | Sequence[Turn], images: Sequence[ImageSource] = (),
                 params: SamplingParams = SamplingParams()) -> str:
        return self.run(prompt, images, params).text
