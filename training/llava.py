"""Reading LLaVA-format data sets: a JSON array (or JSON lines) of `{"id", "image"?, "conversations"}`.

Bad records never stop a run unless it is strict: a line that is not JSON, a record without valid
conversations, an image file that is missing or not an image are reported with file and line, counted,
and skipped. A damaged image found later, when it is decoded, is reported the same way by the data set.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from runtime.errors import AerieError
from runtime.templates import IMAGE_PLACEHOLDER, Turn

log = logging.getLogger("aerie.training")

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class DataError(AerieError):
    """A data set record or file is unusable (raised only in strict mode or when nothing is usable)."""


@dataclass
class Record:
    source: str  # "file:line", for messages
    turns: list[Turn]
    image: Path | None
    image_size: tuple[int, int] | None  # (width, height) from the file header
    category: str = ""
    id: str = ""


@dataclass
class SkipLog:
    """Counts what was skipped, by reason; every skip is logged once with its file and line."""

    strict: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    def skip(self, where: str, reason: str, detail: str) -> None:
        message = f"{where}: {detail}"
        if self.strict:
            raise DataError(message + " (--strict: stopping; drop --strict to skip such records)")
        log.warning("%s; skipped", message)
        self.counts[reason] = self.counts.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def iter_json_objects(path: Path, skips: SkipLog):
    """(line, object) for each top-level record of a JSON array or JSON-lines file, resyncing after errors."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos, n = 0, len(text)

    def skip_space(p: int) -> int:
        while p < n and text[p] in " \t\r\n,":
            p += 1
        return p

    pos = skip_space(pos)
    if pos < n and text[pos] == "[":
        pos += 1
    line, counted = 1, 0  # line number of `pos`, counted incrementally (a full recount is quadratic)
    while True:
        pos = skip_space(pos)
        if pos >= n or text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            skips.skip(f"{path}:{line}", "bad json", f"not valid JSON ({e.msg} at column {e.colno})")
            # Resume at the next line that starts a record.
            nxt = text.find("\n", pos)
            while nxt != -1 and not text[nxt + 1 :].lstrip(" \t").startswith("{"):
                nxt = text.find("\n", nxt + 1)
            if nxt == -1:
                return
            pos = nxt + 1
            continue
        yield line, obj
        pos = end


def parse_turns(conversations) -> list[Turn]:
    """LLaVA conversations -> alternating (user, assistant) turns, starting with the user (as the reference,
    a leading assistant turn is dropped)."""
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' must be a non-empty list")
    turns: list[Turn] = []
    for message in conversations:
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            raise ValueError("each conversation entry needs 'from' and a string 'value'")
        role = ROLES.get(message.get("from"))
        if role is None:
            raise ValueError(f"unknown speaker {message.get('from')!r}; expected human/gpt (or user/assistant)")
        if not turns and role == "assistant":
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"turn {len(turns)} is from {message.get('from')!r}; turns must alternate human, gpt")
        turns.append((role, message["value"]))
    if len(turns) < 2:
        raise ValueError("no human turn followed by a gpt answer")
    if len(turns) % 2:
        turns = turns[:-1]  # a trailing question without an answer teaches nothing
    return turns


def move_image_placeholder(turns: list[Turn], has_image: bool) -> list[Turn]:
    """The reference's preprocess_multimodal: `<image>` leaves wherever it was and starts the first human
    turn, followed by a newline. Text-only samples lose any stray placeholder."""
    cleaned = [
        (role, text.replace(IMAGE_PLACEHOLDER, "").strip() if role == "user" and IMAGE_PLACEHOLDER in text else text)
        for role, text in turns
    ]
    if has_image:
        cleaned[0] = ("user", (IMAGE_PLACEHOLDER + "\n" + cleaned[0][1]).strip())
    return cleaned


def image_header(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; the pixels are decoded later, when the sample is used."""
    with Image.open(path) as im:
        return im.size


def read_records(path: str | Path, image_folder: str | Path | None = None, skips: SkipLog | None = None) -> list[Record]:
    """Every usable record of a LLaVA JSON file; images are resolved against `image_folder`
    (default: the JSON file's directory)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file; generate it with `python -m runtime.eval.synthetic` or fix the path")
    folder = Path(image_folder) if image_folder is not None else path.parent
    skips = skips or SkipLog()
    records: list[Record] = []
    for line, obj in iter_json_objects(path, skips):
        where = f"{path}:{line}"
        if not isinstance(obj, dict):
            skips.skip(where, "bad record", "a record must be a JSON object")
            continue
        try:
            turns = parse_turns(obj.get("conversations"))
        except ValueError as e:
            skips.skip(where, "bad record", str(e))
            continue
        image = obj.get("image")
        if isinstance(image, list):
            if len(image) > 1:
                skips.skip(where, "bad record", f"{len(image)} images; EVE and Eagle train with one image per sample")
                continue
            image = image[0] if image else None
        image_path = size = None
        if image is not None:
            if not isinstance(image, str):
                skips.skip(where, "bad record", "'image' must be a path string")
                continue
            image_path = folder / image
            if not image_path.is_file():
                skips.skip(where, "missing image", f"image file {image_path} not found")
                continue
            try:
                size = image_header(image_path)
            except (UnidentifiedImageError, OSError) as e:
                skips.skip(where, "bad image", f"image file {image_path} is not an image Pillow can read ({e})")
                continue
        turns = move_image_placeholder(turns, image_path is not None)
        records.append(Record(where, turns, image_path, size, str(obj.get("category", "")), str(obj.get("id", ""))))
    if not records:
        raise DataError(f"{path}: no usable records ({skips.total} skipped); see the warnings above")
    return records
