"""Benchmarks distributed as tables (MMBench's TSV, MMVP's CSV, the Hugging Face parquet files of MMMU
and RealWorldQA): rows as dicts, and the images some of them embed, written once to an image folder so
every backend (an engine, a server) reads the same files."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .questions import BenchmarkDataError


def read_delimited(path: Path, delimiter: str) -> list[dict[str, str]]:
    """A CSV or TSV file with a header row."""
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: no such file; check --data")
    csv.field_size_limit(sys.maxsize)  # MMBench keeps each image as one base64 field of megabytes
    with path.open(encoding="utf-8-sig", newline="") as f:
        try:
            rows = list(csv.DictReader(f, delimiter=delimiter))
        except csv.Error as e:
            raise BenchmarkDataError(f"{path}: not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file ({e})") from None
    if not rows:
        raise BenchmarkDataError(f"{path}: no rows; is it the benchmark's file?")
    return rows


def read_parquet(path: Path, pattern: str = "*.parquet") -> list[dict]:
    """The rows of one parquet file, or of the files matching `pattern` under the folder `path` (by name)."""
    try:
        import pyarrow.parquet as pq  # imported here: only the parquet-distributed benchmarks need it
    except ImportError:
        raise BenchmarkDataError(f"{path}: reading parquet files needs pyarrow; pip install pyarrow") from None
    files = sorted(path.glob(pattern)) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise BenchmarkDataError(f"{path}: no {pattern} files; point --data at the benchmark's .parquet file or folder")
    rows: list[dict] = []
    for file in files:
        try:
            rows += pq.read_table(file).to_pylist()
        except Exception as e:  # pyarrow raises several kinds for a damaged or non-parquet file
            raise BenchmarkDataError(f"{file}: not a readable parquet file ({e})") from None
    return rows


def image_suffix(data: bytes, where: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format or "PNG"
    except (UnidentifiedImageError, OSError):
        raise BenchmarkDataError(f"{where}: the embedded image is not an image file") from None
    return ".jpg" if kind == "JPEG" else f".{kind.lower()}"


def save_image(data: bytes, folder: Path, stem: str, where: str) -> str:
    """Write an embedded image as <folder>/<stem>.<its format> unless it is there; its path."""
    path = folder / f"{stem}{image_suffix(data, where)}"
    if not path.is_file() or path.stat().st_size != len(data):
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_bytes(data)
        partial.replace(path)  # never a half-written image for a later run to trust
    return str(path)


def decode_base64_image(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BenchmarkDataError(f"{where}: the image field is not base64") from None


def parquet_image_bytes(value: object, where: str) -> bytes:
    """A Hugging Face `Image` cell ({"bytes": ..., "path": ...}) as bytes."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes) or not data:
        raise BenchmarkDataError(f"{where}: no image bytes in the image column")
    return data
