"""The runtime installs and runs without torch or transformers (DESIGN.md): importing it, or any of its
modules, in a fresh interpreter loads neither."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_runtime_loads_no_torch_or_transformers():
    out = run_python(
        "import json, sys, runtime\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    assert json.loads(out) == []


# Every runtime module is imported with torch and transformers made unimportable, as on an edge box: a
# module that needs them at import time fails here with the name of the import that reached them.
EDGE_BOX = r"""
import importlib, importlib.abc, json, pkgutil, sys, traceback

HEAVY = %r

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"blocked import of {name}")
        return None

sys.meta_path.insert(0, Blocked())
import runtime

failures = {}
def record(name):
    failures[name] = traceback.format_exc(limit=-3)

names = [m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.", onerror=record)]
for name in names:
    if name.rsplit(".", 1)[-1] == "__main__":
        continue  # running it would start the CLI; its imports are the package's
    try:
        importlib.import_module(name)
    except Exception:  # a blocked heavy import, or any other import failure: both break an edge box
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps({"modules": names, "failures": failures}))
""" % (HEAVY,)


def test_every_runtime_module_imports_without_torch_or_transformers():
    """Every module imports: optional backends (TensorRT, TensorRT-LLM, Triton) import their packages only when
    chosen, so no module of the runtime may fail to import on a box without them."""
    result = json.loads(run_python(EDGE_BOX))
    assert result["failures"] == {}, "\n".join(f"{k}:\n{v}" for k, v in result["failures"].items())
    for name in ("runtime.image_io", "runtime.preprocess", "runtime.templates", "runtime.tokenizer", "runtime.prompt",
                 "runtime.sampling", "runtime.detokenize", "runtime.errors", "runtime.backends.base",
                 "runtime.backends.tensorrt_vision", "runtime.backends.trtllm_decoder", "runtime.triton.entry_model"):
        assert name in result["modules"], name
