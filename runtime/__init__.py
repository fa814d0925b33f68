"""Aerie's runtime: engine directories in, answers out. `from runtime import Pipeline`.

Names are imported on first use, so `import runtime` stays cheap and loads neither torch nor onnxruntime.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Pipeline": ".pipeline",
    "Chat": ".pipeline",
    "Answer": ".pipeline",
    "RawPrompt": ".prompt",
    "SamplingParams": ".sampling",
    "ImageCache": ".image_cache",
    "Manifest": ".manifest",
    "verify": ".manifest",
    "AerieError": ".errors",
    "ManifestError": ".errors",
    "ContextOverflowError": ".errors",
    "ImageError": ".errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
