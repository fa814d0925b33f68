"""How an image is cut for the vision engine, in the image's own pixels: what the demo page draws over it."""

from __future__ import annotations

from PIL import Image

from ..preprocess import PreprocessSpec, preprocess_image


def tile_layout(image: Image.Image, spec: PreprocessSpec) -> dict:
    """Boxes (tiles) or a grid (token cells) to draw over `image`, whether a thumbnail tile follows the tiles,
    the token count, and a one-line summary."""
    inputs = preprocess_image(image, spec)
    w, h = image.size
    layout = {"kind": spec.kind, "width": w, "height": h, "tokens": inputs.num_tokens, "tiles": [], "grid": None,
              "thumbnail": False}
    if spec.kind == "dynamic_tiles":
        cols, rows = inputs.grid
        layout["tiles"] = [list(box) for box in inputs.tiles[: cols * rows]]
        # After the tiles, the whole image squeezed into one more tile (drawn beside the image).
        thumbnail = layout["thumbnail"] = len(inputs.tiles) > cols * rows
        layout["summary"] = (f"{cols}×{rows} tiles of {spec.image_size}² px" + (" + a thumbnail" if thumbnail else "")
                             + f", {spec.tokens_per_tile} tokens each: {inputs.num_tokens} image tokens")
    elif spec.kind in ("eve_anyres", "eve_anyratio"):
        cols, rows = inputs.grid
        layout["grid"] = {"cols": cols, "rows": rows, "box": [0, 0, w, h]}
        layout["summary"] = (f"no tiles: one {cols}×{rows} patch grid at the image's own aspect ratio "
                             f"(+ a separator per row and a CLS token): {inputs.num_tokens} image tokens")
    else:
        side = max(w, h)
        left, top = -((side - w) // 2), -((side - h) // 2)
        cols, rows = inputs.grid
        layout["grid"] = {"cols": cols, "rows": rows, "box": [left, top, left + side, top + side]}
        layout["summary"] = (f"padded to a square, resized to {spec.image_size}² px, a {cols}×{rows} grid: "
                             f"{inputs.num_tokens} image tokens")
    return layout
