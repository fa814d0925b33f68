"""Open any image Pillow can read and bring it to 8-bit RGB, or fail with one line that names the file."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageSource = Union[str, os.PathLike, bytes, Image.Image]

# 64 megapixels: an 8000x8000 photo passes, a decompression bomb does not.
DEFAULT_MAX_PIXELS = 64_000_000
# The pixel limit alone lets a 1 x 64,000,000 strip through, and decoding and resizing cost grows with the
# number of rows: a side limit keeps the work per image near that of a square image of the same pixels.
DEFAULT_MAX_SIDE = 32_768
# Transparent pixels become white: what a viewer shows behind a transparent PNG.
ALPHA_BACKGROUND = (255, 255, 255)


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return "<PIL image>"


def _open(source: ImageSource, name: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{name}: the image is empty (0 bytes); send the image file's contents")
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.exists():
        raise ImageError(f"{name}: no such image file; check the path")
    if not path.is_file():  # a directory, or a device such as /dev/zero that would be read forever
        raise ImageError(f"{name}: not a regular file (a directory, device or pipe); give an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{name}: the file is empty (0 bytes); it is not an image")
    return Image.open(path)


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit greyscale (PNG I;16, TIFF I) keeps its contrast: scale 0..65535 to 0..255."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
    grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha composited on white, 16-bit scaled, CMYK and palettes converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _sixteen_bit_to_rgb(image)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "La":
        image = image.convert("LA")  # Pillow converts premultiplied La to LA only
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """Read an image (path, bytes or PIL image), apply its EXIF orientation and return it as RGB.

    Raises ImageError naming the file when it is missing, empty, not an image, truncated, or has more
    than `max_pixels` pixels or a side over `max_side` (checked from the header, before decoding).
    """
    return _read(source, max_pixels, max_side, decode=True)


def image_size(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(width, height) from the image's header, within the limits of `load_image`; no pixel is decoded."""
    return _read(source, max_pixels, max_side, decode=False)


def _read(source: ImageSource, max_pixels: int, max_side: int, decode: bool):
    name = _describe(source)
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's bomb warning (its hard error at twice its limit stays).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open(source, name)
            try:
                check_size(image.size, name, max_pixels, max_side)
                return _decode(image) if decode else image.size
            finally:
                if image is not source:
                    image.close()  # the file stays open after load() for GIF/TIFF, or after an error
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read (PNG, JPEG, WebP, GIF, TIFF, BMP ...)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused as a decompression bomb ({e}); downscale the image") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode the image; downscale it") from None
    except Exception as e:  # Pillow's format plugins raise many types (struct.error, IndexError, ...) on bad files
        raise ImageError(f"{name}: the image is damaged or truncated ({type(e).__name__}: {e}); "
                         "re-export or re-download it") from None


def check_size(size: tuple[int, int], name: str, max_pixels: int, max_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height:,} pixels is over the limit of "
            f"{max_pixels:,}; downscale the image or raise the pixel limit"
        )
    if max(width, height) > max_side:
        raise ImageError(f"{name}: {width}x{height} has a side over the limit of {max_side:,} pixels; "
                         "crop or downscale the image")


def _decode(image: Image.Image) -> Image.Image:
    """Decode, orient and convert: a new image, independent of `image`'s file."""
    image.load()
    oriented = ImageOps.exif_transpose(image)  # always a new image (a copy when there is nothing to turn)
    return to_rgb(oriented)
