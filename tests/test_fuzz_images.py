"""Fuzz: damaged image files of every format Pillow reads here (bit flips, cuts, insertions, size fields set
large) through `image_size` and `load_image`: each gives an RGB image within the limits or a one-line
ImageError, never another exception, and no case takes long (bounded work per image)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from fuzz import SEED, Fuzzer, counts, skip_unless_asked
from runtime.errors import ImageError
from runtime.image_io import image_size, load_image

MAX_PIXELS, MAX_SIDE = 4_000_000, 8192
QUICK = 2000


def seed_images() -> list[bytes]:
    """Small valid files: PNG (RGB, RGBA, palette, grey, 16-bit), JPEG (RGB, CMYK, progressive), GIF (animated),
    WebP, TIFF, BMP, ICO, PPM, TGA."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    out = []

    def save(image: Image.Image, fmt: str, **kwargs) -> None:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        out.append(buffer.getvalue())

    save(rgb, "PNG")
    save(rgb.convert("RGBA"), "PNG")
    save(rgb.convert("P"), "PNG", transparency=0)
    save(rgb.convert("L"), "PNG")
    save(Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)), "PNG")
    save(rgb, "JPEG", quality=80)
    save(rgb.convert("CMYK"), "JPEG")
    save(rgb, "JPEG", progressive=True, exif=Image.Exif().tobytes())
    save(rgb.convert("P"), "GIF", save_all=True, append_images=[rgb.convert("P").rotate(90)])
    save(rgb, "WEBP")
    save(rgb, "TIFF", compression="tiff_deflate")
    save(rgb, "BMP")
    save(rgb, "ICO")
    save(rgb, "PPM")
    save(rgb, "TGA")
    return out


def check(data: bytes) -> str:
    """"ok" or "error"; anything else is a bug, described."""
    try:
        width, height = image_size(data, MAX_PIXELS, MAX_SIDE)
        image = load_image(data, MAX_PIXELS, MAX_SIDE)
    except ImageError as e:
        return "error" if "\n" not in str(e) else f"BUG multi-line ImageError: {e}"
    except Exception as e:
        return f"BUG {type(e).__name__}: {e}"
    if image.mode != "RGB" or width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        return f"BUG {image.mode} {image.size} from a header of {width}x{height}"
    return "ok"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damage it reads past
@pytest.mark.parametrize("cases", counts(QUICK, 50_000))
def test_damaged_images_are_read_or_refused_in_one_line(cases, request):
    skip_unless_asked(request, cases, QUICK)
    fuzzer = Fuzzer(SEED)
    seeds = seed_images()
    assert all(check(data) == "ok" for data in seeds)
    bugs, outcomes, slowest = [], {"ok": 0, "error": 0}, (0.0, -1)
    for i in range(cases):
        data = fuzzer.mutate_bytes(fuzzer.rng.choice(seeds))
        start = time.monotonic()
        outcome = check(data)
        slowest = max(slowest, (time.monotonic() - start, i))
        if outcome.startswith("BUG"):
            bugs.append((i, outcome))
        else:
            outcomes[outcome] += 1
    assert not bugs, bugs[:10]
    assert slowest[0] < 5, f"case {slowest[1]} took {slowest[0]:.1f} s"
    assert outcomes["ok"] > cases // 20 and outcomes["error"] > cases // 20, outcomes  # both sides were reached
