"""The PyTorch model as one more backend of the runtime (docs/design.md, "Backends": `torch`): a vision engine and
a decoder engine behind runtime/backends/base.py's interfaces, and a runtime `Pipeline` on them. So the oracle
runs through the same preprocessing, template, tokenizer, generation loop and sampler as every built engine, and
comparing an engine with PyTorch is comparing two Pipelines.

    pipe = torch_pipeline("examples/eve-tiny")
    pipe.generate("What colour is the shape?", images=["examples/images/shapes.png"])

The engines compute in float32 whatever dtype the weights are stored in (models/precision.py), unless the model
was loaded in a lower precision on purpose (`dtype=torch.bfloat16`: then in that dtype).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from runtime.backends.base import VisionEngine, check_prompt
from runtime.detokenize import stop_token_ids
from runtime.manifest import Manifest
from runtime.pipeline import Pipeline
from runtime.preprocess import PreprocessSpec, max_image_tokens
from runtime.templates import get_template
from runtime.tokenizer import Tokenizer

from .checkpoint import load_model
from .precision import Float32Compute
from .vlm import VisionLanguageModel, embed_with_images

TORCH_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def computing(model: nn.Module, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """A reusable context: float32 compute from stored weights, or the model's own dtype."""
    return Float32Compute(model) if dtype == torch.float32 else contextlib.nullcontext()


class TorchVision:
    """`VisionEngine`: the model's vision tower and projector; float32 rows out."""

    def __init__(self, model: VisionLanguageModel, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.model, self.dtype, self.device = model, dtype, device
        self.compute = computing(model, dtype)  # type: ignore[arg-type]

    @torch.no_grad()
    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(np.ascontiguousarray(pixel_values)).to(self.device, self.dtype)
        with self.compute:
            rows = self.model.encode_images(pixels)
        return rows.reshape(-1, rows.shape[-1]).float().cpu().numpy()


def modality_inputs(decoder: nn.Module, input_ids: np.ndarray | torch.Tensor, vocab_size: int) -> dict:
    """The decoder's per-position modality mask (image ids are those from vocab_size on), for a decoder that
    routes by it (EVEv2); nothing for the others. `input_ids` is one prompt [seq] or a batch [batch, seq]
    (numpy, or torch on any device); the mask is [batch, seq] on the ids' device."""
    if not getattr(decoder, "routes_by_modality", False):
        return {}
    ids = torch.as_tensor(input_ids)
    return {"visual_token_mask": (ids.reshape(1, -1) if ids.dim() < 2 else ids) >= vocab_size}


class TorchDecoder:
    """`DecoderEngine` over a Hugging Face causal LM that takes inputs_embeds (`model.decoder`, or a quantized
    stand-in): one DynamicCache per slot; a batched decode runs the slots one after another."""

    def __init__(self, decoder: nn.Module, max_batch: int = 1, max_length: int | None = None,
                 dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.decoder = decoder.eval()
        embed = decoder.get_input_embeddings()
        self.vocab_size, self.hidden_size = embed.num_embeddings, embed.embedding_dim
        self.max_batch = max_batch
        self.max_length = int(max_length or decoder.config.max_position_embeddings)
        self.dtype, self.device = dtype, device
        self.compute = computing(decoder, dtype)
        self.caches: list[DynamicCache | None] = [None] * max_batch

    @torch.no_grad()
    def embed(self, input_ids: np.ndarray, image_table: np.ndarray | None) -> torch.Tensor:
        """inputs_embeds [1, n, hidden] of a prompt, image rows spliced in (docs/design.md), in the compute dtype."""
        ids = torch.from_numpy(np.asarray(input_ids, np.int64).reshape(-1))[None].to(self.device)
        table = None if image_table is None else torch.from_numpy(np.asarray(image_table, np.float32)).to(self.device)
        with self.compute:
            return embed_with_images(self.decoder.get_input_embeddings(), ids, table)

    @torch.no_grad()
    def _run(self, slot: int, input_ids: np.ndarray, image_table: np.ndarray | None) -> np.ndarray:
        embeds = self.embed(input_ids, image_table)
        with self.compute:
            out = self.decoder(inputs_embeds=embeds, past_key_values=self.caches[slot], use_cache=True,
                               logits_to_keep=1, **modality_inputs(self.decoder, input_ids, self.vocab_size))
        return out.logits[0, -1].float().cpu().numpy()

    def prefill(self, slot: int, input_ids: np.ndarray, image_table: np.ndarray | None) -> np.ndarray:
        input_ids = np.asarray(input_ids, np.int64).reshape(-1)
        check_prompt(input_ids, image_table, self.vocab_size, self.hidden_size, self.max_length)
        self.caches[slot] = DynamicCache(config=self.decoder.config)
        return self._run(slot, input_ids, image_table)

    def decode(self, slots: Sequence[int], token_ids: np.ndarray) -> np.ndarray:
        token_ids = np.asarray(token_ids, np.int64).reshape(-1)
        return np.stack([self._run(slot, token_ids[i : i + 1], None) for i, slot in enumerate(slots)])

    def release(self, slot: int) -> None:
        self.caches[slot] = None


def describe_model(model: VisionLanguageModel, tokenizer: Tokenizer, spec: PreprocessSpec) -> dict:
    """The manifest fields a model decides (docs/engine-format.md): family, preprocessing, image-token layout,
    chat template and special ids. Every engine built from the model, and its PyTorch pipeline, share them."""
    template = get_template(model.chat_template)
    return {
        "family": model.family,
        "preprocess": spec.to_dict(),
        "image_tokens": {
            "first_id": model.text_vocab_size(),
            "hidden_size": model.text_hidden_size(),
            "image_start": template.image_start,
            "image_end": template.image_end,
            "max_per_image": max_image_tokens(spec),
        },
        "chat_template": template.name,
        "special_ids": {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id,
                        "stop": sorted(stop_token_ids(tokenizer, template))},
    }


def pipeline_on_model(model: VisionLanguageModel, tokenizer: Tokenizer, spec: PreprocessSpec | None = None,
                      source: str | Path = "", dtype: torch.dtype = torch.float32, device: str = "cpu",
                      max_batch: int = 1, decoder: nn.Module | None = None, vision: VisionEngine | None = None
                      ) -> Pipeline:
    """A runtime Pipeline whose engines are `model`'s: its decoder, or `decoder` (a quantized stand-in for it),
    and its vision tower, or `vision` (another engine for it, such as a quantized vision graph)."""
    spec = spec or model.preprocess_spec()
    dtype_name = TORCH_DTYPES[dtype]
    part = {"backend": "torch", "dtype": dtype_name, "quantization": None, "files": []}
    manifest = Manifest(source={"path": str(source), "digest": ""},
                        parts={"vision": dict(part), "decoder": dict(part)}, **describe_model(model, tokenizer, spec))
    vision = vision or TorchVision(model, dtype, device)
    engine = TorchDecoder(decoder if decoder is not None else model.decoder, max_batch, dtype=dtype, device=device)
    return Pipeline.from_engines(manifest, tokenizer, vision, engine)


def torch_pipeline(checkpoint: str | Path, dtype: torch.dtype | None = None, device: str = "cpu",
                   tokenizer_dir: str | Path | None = None, max_batch: int = 1, **spec_overrides) -> Pipeline:
    """The checkpoint's PyTorch model as a Pipeline: float32 compute from the stored weights, or `dtype` (the
    weights converted to it, e.g. torch.bfloat16). `tokenizer_dir`: a converted tokenizer
    (models.tokenizer_build.convert_tokenizer) for checkpoints that ship no tokenizer.json the runtime loads."""
    convert = dtype if dtype not in (None, torch.float32) else None
    model = load_model(checkpoint, dtype=convert)
    if device != "cpu":
        model = model.to(device)
    tokenizer = Tokenizer.from_dir(tokenizer_dir or checkpoint)
    return pipeline_on_model(model, tokenizer, model.preprocess_spec(**spec_overrides), checkpoint,
                             dtype or torch.float32, device, max_batch)
