"""The engine manifest (DESIGN.md, docs/engine-format.md): what an engine directory holds and how to run it.

`manifest.json` is written last by the builder, after every other file, with the sha256 of each; the
runtime reads it with `verify(engine_dir)` and refuses a directory whose schema it doesn't know, whose
fields have the wrong type, whose paths leave the directory, or whose files are missing, differ, or are not
listed (the manifest protects every file the runtime opens, not only the ones it names). Pure Python: the
runtime imports it on an edge box.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

from .errors import ManifestError
from .preprocess import PreprocessSpec
from .templates import TEMPLATES

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REBUILD = "rebuild it with `python build.py CHECKPOINT --out DIR --force`"
PART_KEYS = ("backend", "dtype", "quantization", "files")
# Not part of the engine: the Triton model repository written into it later (runtime/triton/repository.py) and
# the quantization accuracy report, written after the manifest because it records the self-check (quant/checks.py).
UNLISTED = re.compile(r"^(triton|\.triton\.[^/]*|quantization/report)(/|$)")


@dataclass
class Manifest:
    """Everything the runtime needs besides the files themselves. `parts` maps "vision" and "decoder" to
    their description: backend, dtype, quantization, files (relative paths) and backend-specific fields."""

    family: str
    source: dict  # {"path": checkpoint dir as given, "digest": "sha256:..." of its config, weights, tokenizer}
    parts: dict[str, dict]
    preprocess: dict  # PreprocessSpec.to_dict()
    image_tokens: dict  # {"first_id": ids from here address the image table, "hidden_size", "image_start", "image_end", "max_per_image"}
    chat_template: str
    special_ids: dict  # {"bos": id|None, "eos": id|None, "pad": id|None, "stop": [ids that end generation]}
    tokenizer: str = "tokenizer"  # directory with tokenizer.json (+ tokenizer_config.json)
    build: dict = field(default_factory=dict)  # flags, versions, time
    pending: list[str] = field(default_factory=list)  # steps still to run on another machine
    files: dict[str, dict] = field(default_factory=dict)  # relative path -> {"sha256", "bytes"}
    schema_version: int = SCHEMA_VERSION

    def preprocess_spec(self) -> PreprocessSpec:
        try:
            return PreprocessSpec.from_dict(self.preprocess)
        except (TypeError, ValueError) as e:
            raise ManifestError(f"{MANIFEST}: invalid preprocessing ({e}); {REBUILD}") from None

    def part(self, name: str) -> dict:
        if name not in self.parts:
            raise ManifestError(f"{MANIFEST}: the engine has no {name} part; {REBUILD}")
        return self.parts[name]

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST) -> "Manifest":
        version = d.get("schema_version") if isinstance(d, dict) else None
        if version != SCHEMA_VERSION:
            newer = isinstance(version, int) and version > SCHEMA_VERSION
            raise ManifestError(
                f"{where}: engine schema version {version!r}, this runtime reads version {SCHEMA_VERSION}; "
                + ("upgrade Aerie to run it, or " if newer else "") + REBUILD
            )
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = required - set(d)
        if missing:
            raise ManifestError(f"{where}: missing {', '.join(sorted(missing))}; the file is damaged, {REBUILD}")
        unknown = set(d) - known
        if unknown:
            raise ManifestError(f"{where}: unknown fields {', '.join(shown(k) for k in sorted(unknown))}; {REBUILD}")
        manifest = cls(**d)
        if isinstance(manifest.parts, dict):
            for name, part in manifest.parts.items():
                absent = [k for k in PART_KEYS if not isinstance(part, dict) or k not in part]
                if absent:
                    raise ManifestError(f"{where}: part {name!r} lacks {', '.join(absent)}; {REBUILD}")
        check_manifest(manifest, where)
        return manifest


# --- field types ---------------------------------------------------------------------------------------

Check = Callable[[Any], bool]


def is_int(low: int = 0) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def list_of(check: Check) -> Check:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def is_path(v: Any) -> bool:
    """A relative posix path inside the engine directory: no root, no `..`, no backslash or control character,
    no name longer than a file system takes."""
    if not isinstance(v, str) or not v or "\\" in v or any(c < " " or "\ud800" <= c <= "\udfff" for c in v):
        return False  # (a lone surrogate is no file name either)
    path = PurePosixPath(v)
    return (not path.is_absolute() and ".." not in path.parts and len(v.encode()) <= 4096
            and all(len(p.encode()) <= 255 for p in path.parts))


FIELDS: dict[str, tuple[Check, str]] = {
    "family": (is_str, "a string"),
    "source": (is_dict, "an object"),
    "parts": (lambda v: isinstance(v, dict) and all(isinstance(p, dict) for p in v.values()), "an object of objects"),
    "preprocess": (is_dict, "an object"),
    "image_tokens": (is_dict, "an object"),
    "chat_template": (lambda v: isinstance(v, str) and v in TEMPLATES, f"one of {', '.join(sorted(TEMPLATES))}"),
    "special_ids": (is_dict, "an object"),
    "tokenizer": (is_path, "a relative path inside the engine directory"),
    "build": (is_dict, "an object"),
    "pending": (list_of(is_str), "a list of strings"),
    "files": (lambda v: isinstance(v, dict) and all(isinstance(e, dict) for e in v.values()), "an object of objects"),
}
FILE_ENTRY: dict[str, tuple[Check, str]] = {
    "sha256": (lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) is not None, "64 hex digits"),
    "bytes": (is_int(), "an integer >= 0"),
}
def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_between(low: int, high: int) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


CHANNELS = (lambda v: isinstance(v, list) and len(v) == 3 and all(is_number(x) and abs(x) <= 1e6 for x in v),
            "3 numbers between -1e6 and 1e6")
# Types and sizes here (PreprocessSpec checks how they fit together): sizes a real image model could have,
# so that a manifest can't make preprocessing allocate or loop without end.
PREPROCESS: dict[str, tuple[Check, str]] = {
    "kind": (is_str, "a string"),
    "image_size": (is_between(1, 8192), "an integer from 1 to 8192"),
    "mean": CHANNELS,
    "std": (lambda v: CHANNELS[0](v) and all(x != 0 for x in v), "3 numbers between -1e6 and 1e6, none 0"),
    "image_size_clip": (is_between(1, 8192), "an integer from 1 to 8192"),
    "patch_stride": (is_between(1, 8192), "an integer from 1 to 8192"),
    "conv_stride": (is_between(1, 64), "an integer from 1 to 64"),
    "tokens_per_image": (is_between(0, 1 << 20), "an integer from 0 to 2^20"),
    "tokens_per_tile": (is_between(0, 1 << 20), "an integer from 0 to 2^20"),
    "min_tiles": (is_between(1, 256), "an integer from 1 to 256"),
    "max_tiles": (is_between(1, 256), "an integer from 1 to 256"),
    "use_thumbnail": (lambda v: isinstance(v, bool), "true or false"),
}
IMAGE_TOKENS: dict[str, tuple[Check, str]] = {
    "first_id": (is_int(), "an integer >= 0"),
    "hidden_size": (is_int(1), "an integer >= 1"),
    "image_start": (is_str, "a string"),
    "image_end": (is_str, "a string"),
    "max_per_image": (is_int(), "an integer >= 0"),
}
SPECIAL_IDS: dict[str, tuple[Check, str]] = {
    "bos": (optional(is_int()), "an id or null"),
    "eos": (optional(is_int()), "an id or null"),
    "pad": (optional(is_int()), "an id or null"),
    "stop": (list_of(is_int()), "a list of ids"),
}
PATH = (is_path, "a relative path inside the engine directory")
DECODER_IO = ("inputs_embeds", "seqlens_k", "total_sequence_length", "past_key", "past_value", "logits",
              "present_key", "present_value")
IO_NAME = re.compile(r"(?:[^{}]|\{layer\})+")
COUNT = (is_int(1), "an integer >= 1")
PART: dict[str, tuple[Check, str]] = {
    "backend": (is_str, "a string"),
    "dtype": (is_str, "a string"),
    "files": (list_of(is_str), "a list of paths"),
}
# What each backend reads from its part; every path among them must be listed in `files`.
BACKEND_FIELDS: dict[tuple[str, str], dict[str, tuple[Check, str]]] = {
    ("vision", "ort"): {"model": PATH},
    ("vision", "tensorrt"): {"plan": PATH},
    ("decoder", "ort"): {
        "model": PATH, "embed_tokens": PATH, "vocab_size": COUNT, "hidden_size": COUNT, "num_layers": COUNT,
        "num_heads": COUNT, "num_kv_heads": COUNT, "head_dim": COUNT, "max_length": COUNT,
        "io": (lambda v: isinstance(v, dict) and set(DECODER_IO) <= set(v)
               and all(isinstance(x, str) and IO_NAME.fullmatch(x) for x in v.values()),
               f"an object naming {', '.join(DECODER_IO)} (`{{layer}}` the only placeholder)"),
    },
    ("decoder", "trtllm"): {"engine": PATH, "build_script": PATH, "vocab_size": COUNT, "hidden_size": COUNT},
}
ENGINE_PATHS = ("model", "embed_tokens", "plan")  # files (a TensorRT-LLM engine's `engine` is a directory)


def check_fields(value: Any, table: dict[str, tuple[Check, str]], where: str, origin: str) -> None:
    """ManifestError naming the first field of `value` (an object) that is missing or fails its check."""
    if not isinstance(value, dict):
        raise ManifestError(f"{origin}: {where or 'the manifest'} must be an object, got {type(value).__name__}; "
                            f"{REBUILD}")
    for name, (check, expected) in table.items():
        label = f"{where}.{name}" if where else name
        if name not in value:
            raise ManifestError(f"{origin}: {where or 'the manifest'} lacks {name!r}; the file is damaged, {REBUILD}")
        if not check(value[name]):
            raise ManifestError(f"{origin}: {label} must be {expected}, got {shown(value[name])}; {REBUILD}")


def shown(value: Any) -> str:
    """A value for a one-line message: JSON, control characters escaped, cut at 60 characters."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_path(path: str, where: str, origin: str) -> None:
    if not is_path(path):
        raise ManifestError(f"{origin}: {where} names {path!r}, not a relative path inside the engine directory; "
                            f"{REBUILD}")


def check_manifest(manifest: "Manifest", origin: str) -> None:
    check_fields(asdict(manifest), FIELDS, "", origin)
    for name, entry in manifest.files.items():
        check_path(name, "files", origin)
        check_fields(entry, FILE_ENTRY, f"files[{name!r}]", origin)
    check_fields(manifest.preprocess, PREPROCESS, "preprocess", origin)
    check_fields(manifest.image_tokens, IMAGE_TOKENS, "image_tokens", origin)
    check_fields(manifest.special_ids, SPECIAL_IDS, "special_ids", origin)
    for name, part in manifest.parts.items():
        where = f"parts.{name}" if name.isidentifier() else f"parts[{shown(name)}]"
        check_fields(part, PART, where, origin)
        for path in part["files"]:
            check_path(path, f"{where}.files", origin)
        check_fields(part, BACKEND_FIELDS.get((name, part["backend"]), {}), where, origin)
    decoder = manifest.parts.get("decoder", {})
    for key, same in (("first_id", "vocab_size"), ("hidden_size", "hidden_size")):  # image ids follow the text's
        if same in decoder and manifest.image_tokens[key] != decoder[same]:
            raise ManifestError(f"{origin}: image_tokens.{key} is {manifest.image_tokens[key]}, the decoder's {same} "
                                f"{decoder[same]}; they must be equal, {REBUILD}")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def digest_files(root: Path, names: Iterable[str]) -> str:
    """One sha256 over several files (their names and contents), e.g. a checkpoint's config and weights."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(f"{name}\0{file_sha256(root / name)}\n".encode())
    return "sha256:" + digest.hexdigest()


def engine_files(engine_dir: Path) -> list[str]:
    """Every file under the engine directory but the manifest and the Triton repository, as sorted posix paths
    relative to it."""
    names = (p.relative_to(engine_dir).as_posix() for p in engine_dir.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(n for n in names if n != MANIFEST and not UNLISTED.match(n))


def write_manifest(engine_dir: str | Path, manifest: Manifest) -> Path:
    """Checksum every file in the directory into `manifest.files` and write manifest.json (atomically)."""
    engine_dir = Path(engine_dir)
    manifest.files = {
        name: {"sha256": file_sha256(engine_dir / name), "bytes": (engine_dir / name).stat().st_size}
        for name in engine_files(engine_dir)
    }
    for name, part in manifest.parts.items():
        absent = [f for f in part["files"] if f not in manifest.files]
        if absent:
            raise ManifestError(f"{engine_dir}: the {name} part names {', '.join(absent)}, which is not in the directory")
    path = engine_dir / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(engine_dir: str | Path) -> Manifest:
    engine_dir = Path(engine_dir)
    path = engine_dir / MANIFEST
    if not engine_dir.is_dir():
        raise ManifestError(f"{engine_dir}: no such engine directory; build one with `python build.py CHECKPOINT --out {engine_dir}`")
    if not path.is_file():
        raise ManifestError(f"{path}: not found, so {engine_dir} is not a finished engine directory; {REBUILD}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); {REBUILD}") from None
    return Manifest.from_dict(data, str(path))


def verify(engine_dir: str | Path, checksums: bool = True) -> Manifest:
    """Read the manifest and check the directory against it: every file present, same size and (with checksums)
    same sha256; every file in the directory (but the Triton repository) listed; every path inside it.

    Raises ManifestError naming the first file that is missing, differs, is not listed or leaves the directory.
    """
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    root = engine_dir.resolve()
    for name in unlisted_files(engine_dir, manifest):
        path = engine_dir / name if is_path(name) else f"{engine_dir}/{shown(name)}"
        raise ManifestError(f"{path}: in the engine directory but not in its manifest, so it can't be checked: "
                            f"the manifest was edited or the file added; remove the file or {REBUILD}")
    for name, expected in manifest.files.items():
        path = engine_dir / name
        if not path.resolve().is_relative_to(root):
            raise ManifestError(f"{path}: leads outside the engine directory (a symbolic link); {REBUILD}")
        if not path.is_file():
            raise ManifestError(f"{path}: missing from the engine directory; {REBUILD}")
        if path.stat().st_size != expected["bytes"]:
            raise ManifestError(
                f"{path}: {path.stat().st_size} bytes, the manifest says {expected['bytes']}: the file is damaged "
                f"or was changed; {REBUILD}"
            )
        if checksums and file_sha256(path) != expected["sha256"]:
            raise ManifestError(f"{path}: sha256 differs from the manifest: the file is damaged or was changed; {REBUILD}")
    return manifest


def unlisted_files(engine_dir: Path, manifest: Manifest) -> list[str]:
    """Files the runtime may open that the manifest does not protect: files in the directory it doesn't list,
    and paths its parts name that are not among its files (the tokenizer's files are in the directory)."""
    named = [part[key] for part in manifest.parts.values() for key in ENGINE_PATHS if key in part]
    named += [f for part in manifest.parts.values() for f in part["files"]]
    return [n for n in engine_files(engine_dir) + named if n not in manifest.files]
