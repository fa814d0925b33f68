"""Bad and unusual images: each is either processed correctly (pixels and shapes asserted) or rejected with
a one-line ImageError that names the file. Every image is made here, none is committed."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import ImageError
from runtime.image_io import image_size, load_image
from runtime.preprocess import SIGLIP_MEAN, SIGLIP_STD, PreprocessSpec, preprocess_image

SPECS = {
    "eve_anyres": PreprocessSpec("eve_anyres", 672),
    "pad_square": PreprocessSpec("pad_square", 1024, tokens_per_image=1024),
    "dynamic_tiles": PreprocessSpec("dynamic_tiles", 448, mean=SIGLIP_MEAN, std=SIGLIP_STD, tokens_per_tile=256),
}


def save(image: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    image.save(path, fmt, **kwargs)
    return path


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG written chunk by chunk, for what Pillow cannot write (48-bit RGB, a header-only giant)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = chunk(b"IDAT", zlib.compress(rows)) if rows is not None else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body + chunk(b"IEND", b"")


def assert_one_line_error(source, name: str, match: str, **kwargs) -> None:
    with pytest.raises(ImageError) as info:
        load_image(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert name in message
    assert match in message, message


def noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------- rejected


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    full = save(noise(256, 256), tmp_path / f"full.{fmt.lower()}", fmt)
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert_one_line_error(cut, str(cut), "damaged or truncated")


def test_zero_bytes(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_one_line_error(empty, str(empty), "empty (0 bytes)")
    assert_one_line_error(b"", "<0 bytes>", "empty (0 bytes)")


def test_not_an_image(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG, just text with the wrong name\n")
    assert_one_line_error(text, str(text), "not an image Pillow can read")
    assert_one_line_error(b"%PDF-1.7 not an image", "<21 bytes>", "not an image Pillow can read")


def test_missing_file(tmp_path):
    assert_one_line_error(tmp_path / "nope.png", str(tmp_path / "nope.png"), "no such image file")


def test_device_or_directory_is_not_an_image_file(tmp_path):
    """/dev/zero exists: "no such image file" would send the user looking for a typo."""
    assert_one_line_error("/dev/zero", "/dev/zero", "not a regular file")
    assert_one_line_error(tmp_path, str(tmp_path), "not a regular file")


def test_side_limit_from_the_header():
    """A 1 x 16,000,000 strip is within 16 M pixels but costs seconds to decode and resize: refused unread."""
    strip = png_bytes(1, 16_000_000, 8, 2, None)  # a header only: decoding it would fail as truncated
    assert_one_line_error(strip, f"<{len(strip)} bytes>", "side over the limit of 16,384", max_pixels=16_000_000,
                          max_side=16_384)
    with pytest.raises(ImageError, match="side over the limit"):
        image_size(strip, 16_000_000, 16_384)
    assert image_size(png_bytes(300, 200, 8, 2, None)) == (300, 200)  # the header is enough


def test_decompression_bomb_refused_from_the_header(tmp_path):
    """A few hundred bytes that claim 20000x20000 (Pillow's own hard limit) or 10000x10000 (over ours)."""
    giant = tmp_path / "giant.png"
    giant.write_bytes(png_bytes(20000, 20000, 8, 2, None))
    assert_one_line_error(giant, str(giant), "decompression bomb")
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(10000, 10000, 8, 2, None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's bomb warning must not escape: our limit replaces it
        assert_one_line_error(big, str(big), "over the limit of 64,000,000")
    small = save(noise(20, 20), tmp_path / "small.png", "PNG")
    assert_one_line_error(small, str(small), "20x20 = 400 pixels is over the limit of 100", max_pixels=100)


def open_descriptors(path: Path) -> list[str]:
    """This process's file descriptors open on `path` (Linux /proc)."""
    target = str(path.resolve())
    fds = Path("/proc/self/fd")
    return [fd.name for fd in fds.iterdir() if os.path.realpath(fd) == target]


def test_no_file_left_open(tmp_path):
    """Neither a failed load (whose traceback keeps the image alive) nor a GIF, which Pillow keeps open for
    seeking after load(), holds the file."""
    full = save(noise(64, 64), tmp_path / "full.png", "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:200])
    for path, kwargs in [(cut, {}), (full, {"max_pixels": 10})]:
        with pytest.raises(ImageError) as info:
            load_image(path, **kwargs)
        assert info.value is not None and open_descriptors(path) == []
    gif = save(Image.new("P", (4, 4)), tmp_path / "anim.gif", "GIF", save_all=True,
               append_images=[Image.new("P", (4, 4), 1)])
    image = load_image(gif)
    assert image.size == (4, 4) and open_descriptors(gif) == []


# ---------------------------------------------------------------------------------------------- processed


@pytest.mark.parametrize("kind", SPECS)
def test_one_pixel_image(tmp_path, kind):
    path = save(Image.new("RGB", (1, 1), (200, 100, 50)), tmp_path / "dot.png", "PNG")
    image = load_image(path)
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (200, 100, 50)
    out = preprocess_image(image, SPECS[kind])
    expected = {"eve_anyres": ((1, 4, 672, 672), 601), "pad_square": ((1, 3, 1024, 1024), 1024),
                "dynamic_tiles": ((1, 3, 448, 448), 256)}[kind]
    assert (out.pixel_values.shape, out.num_tokens) == expected
    assert np.isfinite(out.pixel_values).all()
    # The single pixel fills the whole input (upscaled), nothing padded.
    rgb = out.pixel_values[0, :3]
    np.testing.assert_allclose(rgb.std(axis=(1, 2)), 0, atol=1e-5)


@pytest.mark.parametrize("kind", SPECS)
@pytest.mark.parametrize("size", [(20000, 20), (20, 20000)], ids=["wide", "tall"])
def test_panorama(tmp_path, kind, size):
    strip = Image.new("RGB", size, (255, 0, 0))
    image = load_image(save(strip, tmp_path / "pano.png", "PNG"))
    out = preprocess_image(image, SPECS[kind])
    wide = size[0] > size[1]
    if kind == "eve_anyres":
        assert out.grid == ((24, 1) if wide else (1, 24))
        assert out.num_tokens == (1 + 1 * 25 if wide else 1 + 24 * 2)
        left, top, right, bottom = out.valid_box
        assert ((bottom - top) if wide else (right - left)) == 28
    elif kind == "pad_square":
        assert out.pixel_values.shape == (1, 3, 1024, 1024)
        red = out.pixel_values[0, 0]
        centre = red[512, :] if wide else red[:, 512]
        across = red[:, 512] if wide else red[512, :]
        pad = (122 / 255 - 0.48145466) / 0.26862954
        # The strip, about one pixel thick after the resize, crosses the whole square; the rest is padding.
        assert centre.min() > pad + 0.8
        np.testing.assert_allclose(across[:500], pad, atol=1e-6)
        np.testing.assert_allclose(across[525:], pad, atol=1e-6)
    else:
        assert out.grid == ((12, 1) if wide else (1, 12))
        assert out.pixel_values.shape == (13, 3, 448, 448) and out.num_tokens == 13 * 256
    assert np.isfinite(out.pixel_values).all()


def test_sixteen_bit_greyscale_png(tmp_path):
    values = np.array([[0, 257, 32896, 65535], [1000, 20000, 40000, 60000]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "grey16.png", "PNG")
    image = load_image(path)
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    expected = np.rint(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 0], expected)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
    # A dark 16-bit image stays dark: 200/65535 is black, not the 8-bit value 200.
    dark = save(Image.fromarray(np.full((2, 2), 200, np.uint16)), tmp_path / "dark16.png", "PNG")
    assert np.asarray(load_image(dark)).max() == 1


def test_sixteen_bit_rgb_png(tmp_path):
    rows = np.zeros((2, 2, 3), ">u2")
    rows[..., 0], rows[..., 1] = 65535, 32896
    rows[1, 1] = (0, 0, 65535)
    data = b"".join(b"\x00" + rows[y].tobytes() for y in range(2))
    path = tmp_path / "rgb48.png"
    path.write_bytes(png_bytes(2, 2, 16, 2, data))
    pixels = np.asarray(load_image(path))
    assert pixels[0, 0].tolist() == [255, 128, 0] and pixels[1, 1].tolist() == [0, 0, 255]


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.paste((255, 255, 0, 0), (8, 0, 16, 16))  # pure blue
    image = load_image(save(cmyk, tmp_path / "cmyk.jpg", "JPEG", quality=95))
    assert image.mode == "RGB" and image.size == (16, 16)
    np.testing.assert_allclose(np.asarray(image)[8, 2], [255, 0, 0], atol=12)
    np.testing.assert_allclose(np.asarray(image)[8, 13], [0, 0, 255], atol=12)


@pytest.mark.parametrize("orientation,size,top_left", [(1, (60, 30), "red"), (3, (60, 30), "blue"),
                                                        (6, (30, 60), "red"), (8, (30, 60), "blue")])
def test_exif_orientation_is_applied(tmp_path, orientation, size, top_left):
    """Stored as 60x30, left half red, right half blue; the viewer's rotation is applied on load."""
    stored = Image.new("RGB", (60, 30), (255, 0, 0))
    stored.paste((0, 0, 255), (30, 0, 60, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = load_image(save(stored, tmp_path / "photo.jpg", "JPEG", exif=exif, quality=95))
    assert image.size == size
    corner = np.asarray(image)[2, 2]
    assert (corner[0] > 200 and corner[2] < 60) if top_left == "red" else (corner[2] > 200 and corner[0] < 60)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (255, 0, 0, 0))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    pixels = np.asarray(load_image(save(rgba, tmp_path / "rgba.png", "PNG")))
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[0, 1].tolist() == [255, 255, 255]
    np.testing.assert_allclose(pixels[0, 2], [127, 127, 127], atol=1)

    la = Image.new("LA", (2, 1), (0, 255))
    la.putpixel((1, 0), (0, 0))
    assert np.asarray(load_image(save(la, tmp_path / "la.png", "PNG")))[0].tolist() == [[0, 0, 0], [255, 255, 255]]

    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 255, 0, 10, 20, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    path = save(palette, tmp_path / "p.png", "PNG", transparency=1)
    with Image.open(path) as stored:
        assert stored.mode == "P"
    assert np.asarray(load_image(path))[0].tolist() == [[0, 255, 0], [255, 255, 255]]
    gif = save(palette, tmp_path / "p.gif", "GIF", transparency=1)
    assert np.asarray(load_image(gif))[0].tolist() == [[0, 255, 0], [255, 255, 255]]


def test_other_modes(tmp_path):
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    assert np.asarray(load_image(save(bilevel, tmp_path / "b.png", "PNG")))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), mode="F")
    got = np.asarray(load_image(save(floats, tmp_path / "f.tiff", "TIFF")))[0, :, 0]
    assert got.tolist() == [0, 128, 255]


def test_premultiplied_alpha_sources():
    """In-memory La / RGBa images (premultiplied alpha): un-premultiplied, then composited on white."""
    la = np.asarray(load_image(Image.new("La", (1, 1), (100, 128))))[0, 0]
    np.testing.assert_allclose(la, [227, 227, 227], atol=1)  # 199 at half opacity over white
    rgba = np.asarray(load_image(Image.new("RGBa", (1, 1), (100, 50, 20, 255))))[0, 0]
    assert rgba.tolist() == [100, 50, 20]


def test_bytes_and_pil_sources():
    image = noise(30, 20)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    np.testing.assert_array_equal(np.asarray(load_image(buffer.getvalue())), np.asarray(image))
    rgba = image.convert("RGBA")
    loaded = load_image(rgba)
    assert loaded.mode == "RGB" and loaded is not rgba
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(image))
