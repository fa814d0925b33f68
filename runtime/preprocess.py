"""Image preprocessing for every family, in numpy + Pillow: the one implementation training and serving share.

- `eve_anyres`   EVE v1: keep the aspect ratio, long side = image_size, short side rounded up to whole
                 patches, centred on a square canvas of the mean colour at patch-aligned offsets, plus a
                 validity-mask channel (EVEv1 `train.py`, `mm_utils.process_images`).
- `eve_anyratio` EVEv2: keep the aspect ratio, scale the area to image_size², round each side up to whole
                 32-pixel blocks; no padding, no mask (EVEv2 `mm_utils.process_images`).
- `pad_square`   Eagle v1: pad to a square with the mean colour, bicubic resize, CLIP normalisation
                 (EAGLE `mm_utils.process_images`, `expand2square`).
- `dynamic_tiles` Eagle2/2.5: InternVL-style dynamic tiling with Eagle's grid choice, tiles in row-major
                 order plus a thumbnail.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import numpy as np
from PIL import Image

from .errors import ImageError
from .image_io import DEFAULT_MAX_SIDE

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

Kind = Literal["eve_anyres", "eve_anyratio", "pad_square", "dynamic_tiles"]
Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything the runtime needs to turn an image into the vision engine's input; stored in the manifest."""

    kind: Kind
    # EVE: canvas side (672 / 1344); EVEv2: the side of a square of the target area (max_size, 800 / 1600);
    # Eagle v1: square side (1024); tiles: tile side (448)
    image_size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    # eve_anyres; eve_anyratio uses patch_stride and conv_stride (its dense_stride)
    image_size_clip: int = 336
    patch_stride: int = 14
    conv_stride: int = 2
    # pad_square
    tokens_per_image: int = 0
    # dynamic_tiles
    tokens_per_tile: int = 0
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("eve_anyres", "eve_anyratio", "pad_square", "dynamic_tiles"):
            raise ValueError(f"unknown preprocessing kind {self.kind!r}")
        if self.kind == "eve_anyres":
            ratio, rem = divmod(self.image_size, self.image_size_clip)
            if rem or ratio < 1 or self.image_size_clip % self.patch_stride:
                raise ValueError(
                    f"eve_anyres needs image_size a multiple of image_size_clip and image_size_clip a "
                    f"multiple of patch_stride; got {self.image_size}, {self.image_size_clip}, {self.patch_stride}"
                )
            if ratio % self.conv_stride:
                raise ValueError(
                    f"eve_anyres needs image_size / image_size_clip ({ratio}) to be a multiple of conv_stride "
                    f"({self.conv_stride}) so that the padding stays aligned to the pooling windows"
                )
        if self.kind == "dynamic_tiles" and not 1 <= self.min_tiles <= self.max_tiles:
            raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {self.min_tiles}, {self.max_tiles}")

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """The reference's background colour: int(mean * 255) per channel (122, 116, 104 for CLIP)."""
        return tuple(int(m * 255) for m in self.mean)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)}; the engine was built by a newer Aerie")
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class ImageInput:
    """One preprocessed image: the vision engine's input and how many embedding rows it yields."""

    # float32; eve_anyres [1,4,S,S]; eve_anyratio [1,3,H,W]; pad_square [1,3,S,S]; dynamic_tiles [n,3,T,T]
    pixel_values: np.ndarray
    num_tokens: int
    grid: tuple[int, int]  # eve: (w, h) tokens; tiles: (columns, rows); pad_square: (32, 32)
    tiles: list[Box] = field(default_factory=list)  # where each tile came from, in original pixels
    valid_box: Box | None = None  # eve: the real pixels on the canvas

    def trimmed(self) -> np.ndarray:
        """The engine input without the padding the graph would crop anyway (EVE); else unchanged."""
        if self.valid_box is None:
            return self.pixel_values
        left, top, right, bottom = self.valid_box
        return np.ascontiguousarray(self.pixel_values[:, :, top:bottom, left:right])


def normalize(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW, rescaled by 1/255 and normalised as transformers' image processors do."""
    x = (np.asarray(image, dtype=np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------------- EVE v1


def eve_sizes(width: int, height: int, spec: PreprocessSpec, ratio: int | None = None) -> tuple[int, int, int, int]:
    """(resized width, resized height, pad before, valid length) as EVE's compute_basehw, scaled by `ratio`
    (image_size / image_size_clip by default; 1 gives the CLIP teacher's input)."""
    max_size, stride = spec.image_size_clip, spec.patch_stride
    if width > height:
        val_patch = math.ceil(max_size * height / width / stride)
        base_w, base_h = max_size, val_patch * stride
    else:
        val_patch = math.ceil(max_size * width / height / stride)
        base_w, base_h = val_patch * stride, max_size
    pre = (max_size // stride - val_patch) // 2 * stride
    if ratio is None:
        ratio = spec.image_size // spec.image_size_clip
    return base_w * ratio, base_h * ratio, pre * ratio, val_patch * stride * ratio


def eve_token_grid(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int]:
    """(w, h) of the pooled token grid: tokens = 1 + h * (w + 1)."""
    new_w, new_h, _, _ = eve_sizes(width, height, spec)
    pool = spec.patch_stride * spec.conv_stride
    return new_w // pool, new_h // pool


def eve_canvas(image: Image.Image, spec: PreprocessSpec, ratio: int | None = None) -> tuple[np.ndarray, Box]:
    """[4, side, side]: the resized image centred on a mean-colour square, plus the validity mask."""
    new_w, new_h, pre, valid = eve_sizes(image.width, image.height, spec, ratio)
    resized = image.resize((new_w, new_h), Image.BICUBIC)
    side = max(new_w, new_h)
    canvas = Image.new("RGB", (side, side), spec.pad_color)
    if new_w == new_h:
        canvas, box = resized, (0, 0, side, side)
    elif new_w > new_h:
        canvas.paste(resized, (0, pre))
        box = (0, pre, side, pre + valid)
    else:
        canvas.paste(resized, (pre, 0))
        box = (pre, 0, pre + valid, side)
    mask = np.zeros((1, side, side), dtype=np.float32)
    mask[:, box[1] : box[3], box[0] : box[2]] = 1.0
    return np.concatenate([normalize(canvas, spec.mean, spec.std), mask]), box


def preprocess_eve(image: Image.Image, spec: PreprocessSpec) -> ImageInput:
    pixels, box = eve_canvas(image, spec)
    w, h = eve_token_grid(image.width, image.height, spec)
    return ImageInput(pixels[None], 1 + h * (w + 1), (w, h), valid_box=box)


def eve_teacher_input(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The CLIP teacher's input for EVE's patch-aligning loss (training only): [1, 4, clip, clip]."""
    return eve_canvas(image, spec, ratio=1)[0][None]


# ---------------------------------------------------------------------------------------------- EVEv2


def eve_anyratio_size(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int]:
    """(width, height) the image is resized to: area scaled to image_size², each side rounded up to whole
    blocks of patch_stride * conv_stride pixels (at least one), in the reference's float operations."""
    scale_ratio = math.sqrt(width * height) / spec.image_size
    block = spec.patch_stride * spec.conv_stride
    return (max(int(math.ceil(width / scale_ratio / block)) * block, block),
            max(int(math.ceil(height / scale_ratio / block)) * block, block))


def preprocess_eve_anyratio(image: Image.Image, spec: PreprocessSpec) -> ImageInput:
    """Resize (Pillow's default filter for RGB, bicubic, as the reference's `raw_image.resize`) and normalise;
    tokens = 1 + h * (w + 1): a CLS, then each row of the w x h grid followed by a split token."""
    new_w, new_h = eve_anyratio_size(image.width, image.height, spec)
    block = spec.patch_stride * spec.conv_stride
    w, h = new_w // block, new_h // block
    pixels = normalize(image.resize((new_w, new_h), Image.BICUBIC), spec.mean, spec.std)
    return ImageInput(pixels[None], 1 + h * (w + 1), (w, h))


# ---------------------------------------------------------------------------------------------- Eagle v1


def expand_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Centre the image on a square of `color` (EAGLE's expand2square)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), color)
    square.paste(image, (0, (side - height) // 2) if width > height else ((side - width) // 2, 0))
    return square


def preprocess_pad_square(image: Image.Image, spec: PreprocessSpec) -> ImageInput:
    side = spec.image_size
    longest = max(image.size)
    if longest > 4 * side:
        # A panorama's square would be huge (20000x20000); shrink it first to 2x the target, where the
        # final bicubic resize still sees the same filter support, then pad and resize as the reference.
        scale = 2 * side / longest
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    square = expand_to_square(image, spec.pad_color).resize((side, side), Image.BICUBIC)
    grid = int(math.isqrt(spec.tokens_per_image))
    return ImageInput(normalize(square, spec.mean, spec.std)[None], spec.tokens_per_image, (grid, grid))


# ---------------------------------------------------------------------------------------------- Eagle2/2.5


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All (columns, rows) with min <= columns*rows <= max, ordered by tile count (InternVL's order)."""
    grids = set(
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    )
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_grid(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int]:
    """The grid Eagle2/2.5 pick (their image processors' `find_closest_aspect_ratio`, vLLM's
    `find_closest_aspect_ratio_v2`): the best aspect-ratio fit weighted by the grid's pixels relative to the
    image's, a weight capped at 0.6 so that more tiles stop paying once they hold 60% of the image. Ties keep
    the earlier grid, the one with fewer tiles. (Not InternVL's rule: that one prefers the closest aspect
    ratio alone and breaks ties by area.)"""
    aspect = width / height
    area = width * height
    best, best_factor = (1, 1), float("-inf")
    for cols, rows in candidate_grids(spec.min_tiles, spec.max_tiles):
        grid_aspect = cols / rows
        factor = min((cols * rows * spec.image_size * spec.image_size) / area, 0.6) * min(
            grid_aspect / aspect, aspect / grid_aspect
        )
        if factor > best_factor:
            best, best_factor = (cols, rows), factor
    return best


def tile_image(image: Image.Image, spec: PreprocessSpec) -> tuple[list[Image.Image], tuple[int, int], list[Box]]:
    """Stretch the image to the chosen grid, cut 448² tiles row by row, add a thumbnail if > 1 tile."""
    cols, rows = choose_grid(image.width, image.height, spec)
    t = spec.image_size
    resized = image.resize((t * cols, t * rows), Image.BICUBIC)
    sx, sy = image.width / (t * cols), image.height / (t * rows)
    tiles, boxes = [], []
    for r in range(rows):
        for c in range(cols):
            tiles.append(resized.crop((c * t, r * t, (c + 1) * t, (r + 1) * t)))
            boxes.append((round(c * t * sx), round(r * t * sy), round((c + 1) * t * sx), round((r + 1) * t * sy)))
    if spec.use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((t, t), Image.BICUBIC))
        boxes.append((0, 0, image.width, image.height))
    return tiles, (cols, rows), boxes


def preprocess_tiles(image: Image.Image, spec: PreprocessSpec) -> ImageInput:
    tiles, grid, boxes = tile_image(image, spec)
    pixels = np.stack([normalize(tile, spec.mean, spec.std) for tile in tiles])
    return ImageInput(pixels, spec.tokens_per_tile * len(tiles), grid, tiles=boxes)


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> ImageInput:
    """Turn an RGB image (see image_io.load_image) into the vision engine's input for this family."""
    if image.mode != "RGB":
        raise ImageError(f"expected an RGB image, got mode {image.mode}; load it with runtime.image_io.load_image")
    if spec.kind == "eve_anyres":
        return preprocess_eve(image, spec)
    if spec.kind == "eve_anyratio":
        return preprocess_eve_anyratio(image, spec)
    if spec.kind == "pad_square":
        return preprocess_pad_square(image, spec)
    return preprocess_tiles(image, spec)


# ---------------------------------------------------------------------------------------------- limits


def tile_count_range(spec: PreprocessSpec) -> tuple[int, int]:
    """Fewest and most tiles one image gives under `spec` (dynamic_tiles; the thumbnail counted)."""
    counts = [cols * rows for cols, rows in candidate_grids(spec.min_tiles, spec.max_tiles)]
    counts = [n + 1 if spec.use_thumbnail and n != 1 else n for n in counts]
    return min(counts), max(counts)


def max_image_tokens(spec: PreprocessSpec) -> int:
    """The most embedding rows one image can give under `spec`: what engines size their buffers by."""
    if spec.kind == "eve_anyres":
        side = spec.image_size // (spec.patch_stride * spec.conv_stride)
        return 1 + side * (side + 1)
    if spec.kind == "eve_anyratio":
        # Rows grow with the aspect ratio (the area is fixed): the thinnest image image_io accepts gives the most.
        w, h = eve_anyratio_size(1, DEFAULT_MAX_SIDE, spec)
        block = spec.patch_stride * spec.conv_stride
        return 1 + (h // block) * (w // block + 1)
    if spec.kind == "pad_square":
        return spec.tokens_per_image
    return spec.tokens_per_tile * tile_count_range(spec)[1]
