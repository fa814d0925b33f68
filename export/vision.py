"""The vision graph of each family: preprocessed pixels in, projected embeddings `[n, tokens, hidden]` out.

One graph per preprocessing kind, with the shapes that kind produces left dynamic:
- `eve_anyres`    EVE v1: one image [1, 4, height, width] (RGB + validity mask), any patch-aligned size up
                  to the canvas; the crop to the valid box, the CLS and the row-split tokens are in the graph,
                  so the full padded canvas and `ImageInput.trimmed()` give the same rows.
- `eve_anyratio`  EVEv2: one image [1, 3, height, width], any multiple of 32 on each side.
- `dynamic_tiles` Eagle2/2.5: a batch of tiles [tiles, 3, T, T].
- `pad_square`    Eagle v1: a batch of squares [n, 3, S, S] through all experts.

Pixels go in and embeddings come out as float32 whatever the weights' dtype, so the runtime never casts.
The graphs use only standard ONNX ops (no NonZero, no ORT contrib ops) so TensorRT can parse them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.precision import parameters_as
from models.vlm import VisionLanguageModel
from runtime.preprocess import PreprocessSpec, max_image_tokens

from .onnx_utils import OPSET, export_graph

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
INPUT = "pixel_values"
OUTPUT = "image_embeds"
GRAPH = "model.onnx"


class VisionGraph(nn.Module):
    """`model.encode_images` with float32 at both ends, computing in `dtype` (the vision weights' dtype)."""

    def __init__(self, model: VisionLanguageModel, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(pixel_values.to(self.dtype)).float()


@dataclass
class VisionExport:
    """What the manifest records about the vision graph."""

    files: list[Path]
    input_shape: list[int | str]
    output_shape: list[int | str]
    dtype: str
    opset: int = OPSET

    def describe(self) -> dict:
        return {
            "graph": GRAPH,
            "inputs": {INPUT: {"dtype": "float32", "shape": self.input_shape}},
            "outputs": {OUTPUT: {"dtype": "float32", "shape": self.output_shape}},
            "opset": self.opset,
        }


def sample_pixels(spec: PreprocessSpec) -> tuple[torch.Tensor, dict[int, torch.export.Dim], list[int | str]]:
    """An input of the kind's largest shape, its dynamic dimensions, and the input shape for the manifest."""
    side = spec.image_size
    if spec.kind == "eve_anyres":
        pixels = torch.zeros(1, 4, side, side)
        pixels[:, 3] = 1.0  # all valid: the crop bounds are data-dependent, the sample's values don't matter
        block = spec.patch_stride * spec.conv_stride  # the smallest image: one pooled token
        dims = {2: torch.export.Dim("height", min=block, max=side), 3: torch.export.Dim("width", min=block, max=side)}
        return pixels, dims, [1, 4, "height", "width"]
    if spec.kind == "eve_anyratio":
        block = spec.patch_stride * spec.conv_stride
        side = -(-side // block) * block  # a square image: the target area
        most = max_image_tokens(spec) // 2  # blocks along the longest side preprocessing gives (a 1-block-wide image)
        dims = {2: block * torch.export.Dim("height_blocks", min=1, max=most),
                3: block * torch.export.Dim("width_blocks", min=1, max=most)}
        return torch.zeros(1, 3, side, side), dims, [1, 3, f"{block}*height_blocks", f"{block}*width_blocks"]
    # Two images: a batch of one would let the exporter fix the batch size to 1.
    pixels = torch.zeros(2, 3, side, side)
    name = "tiles" if spec.kind == "dynamic_tiles" else "images"
    return pixels, {0: torch.export.Dim(name)}, [name, 3, side, side]


def export_vision(model: VisionLanguageModel, directory: str | Path, spec: PreprocessSpec | None = None,
                  dtype: torch.dtype = torch.float32) -> VisionExport:
    """Write `directory/model.onnx` (+ `.data` past 2 GB) for the model's vision tower and projector in `dtype`
    (the vision weights are cast for the export only, whatever dtype they are stored in)."""
    spec = spec or model.preprocess_spec()
    pixels, dynamic, input_shape = sample_pixels(spec)
    with parameters_as(model.vision_parameters(), dtype):
        files = export_graph(VisionGraph(model, dtype), (pixels,), Path(directory) / GRAPH, [INPUT], [OUTPUT],
                             {INPUT: dynamic})
    hidden = model.text_hidden_size()
    batch = 1 if spec.kind in ("eve_anyres", "eve_anyratio") else input_shape[0]
    return VisionExport(files, input_shape, [batch, "tokens", hidden], DTYPE_NAMES[dtype])
