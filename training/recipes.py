"""Recipes: one TOML file per family and scale, listing the stages of the paper's training.

```toml
family = "eve"
[model]                 # only for from-scratch presets: a models.tiny config and a tokenizer to train
config = "tiny_eve_config"
overrides = { num_hidden_layers = 4 }
tokenizer = { style = "llama", vocab_size = 512 }
copy_llm_into_image_copies = false   # EVEv2: start the moe_* copies as the decoder's text weights (upstream's step 0)
[defaults]              # any Stage field, for every stage
micro_batch = 8
[[stage]]
name = "pre-align"
template = "plain"
data = "pretrain.json"
train = ["vision_tower", "mm_projector"]     # parameters whose name contains one of these
lr = 4e-5
lr_groups = { vision_tower = 4e-4 }         # a different learning rate by name
```

`--set key=value` on the command line overrides a field of every stage (or `stage.N.key=value`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from runtime.errors import AerieError


class RecipeError(AerieError):
    """A recipe file is missing, malformed, or names an unknown field."""


@dataclass(frozen=True)
class Stage:
    name: str
    data: tuple[str, ...]  # LLaVA JSON files, relative to --data (one string or a list; a list is concatenated)
    template: str = "vicuna_v1"
    train: tuple[str, ...] = ()  # trainable parameter-name substrings; empty means everything
    freeze: tuple[str, ...] = ()  # always frozen (wins over `train`), e.g. the CLIP teacher
    lr: float = 2e-5
    lr_groups: dict = field(default_factory=dict)  # name substring -> learning rate
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    epochs: float = 1.0
    max_steps: int = 0  # > 0 overrides epochs
    global_batch: int = 128
    micro_batch: int = 4
    max_length: int = 2048
    max_grad_norm: float = 1.0
    precision: str = "bf16"  # fp32 | bf16 | fp16 (fp16 on CUDA only, with loss scaling)
    gradient_checkpointing: bool = False
    patch_align_weight: float = 0.0  # EVE's patch-aligning loss weight (1 in the paper, every stage)
    group_by_length: bool = True
    share_prefix: bool = True  # run the text prefix all rows share (the system prompt) once per micro-batch
    save_every: int = 0  # steps between resumable checkpoints (0: only at the end)
    log_every: int = 10
    eval_data: str = ""  # a LLaVA JSON split with categories: exact match at every resumable checkpoint
    eval_limit: int = 0  # only its first N records (0: all)
    seed: int = 0


@dataclass(frozen=True)
class Recipe:
    path: Path
    family: str
    stages: tuple[Stage, ...]
    model: dict = field(default_factory=dict)
    description: str = ""


STAGE_FIELDS = {f.name: f for f in fields(Stage)}


def coerce(key: str, value, where: str):
    """A recipe or --set value in the type of the Stage field."""
    if key not in STAGE_FIELDS:
        raise RecipeError(f"{where}: unknown stage field {key!r}; known: {', '.join(sorted(STAGE_FIELDS))}")
    kind = STAGE_FIELDS[key].type
    if kind.startswith("tuple") and isinstance(value, list):
        return tuple(value)
    if kind == "tuple[str, ...]" and isinstance(value, str):
        return (value,)
    if kind == "float" and isinstance(value, int):
        return float(value)
    return value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe; see training/recipes/")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None
    defaults = raw.get("defaults", {})
    stages = []
    for i, table in enumerate(raw.get("stage", []), 1):
        merged = {**defaults, **table}
        values = {k: coerce(k, v, f"{path} stage {i}") for k, v in merged.items()}
        try:
            stages.append(Stage(**values))
        except TypeError as e:
            raise RecipeError(f"{path} stage {i}: {e}") from None
    if not stages:
        raise RecipeError(f"{path}: no [[stage]] tables")
    stages = apply_overrides(stages, overrides)
    return Recipe(path, raw.get("family", ""), tuple(stages), raw.get("model", {}), raw.get("description", ""))


def parse_value(text: str):
    """A --set value: TOML syntax (numbers, booleans, lists, quoted strings) or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(stages: list[Stage], overrides: list[str]) -> list[Stage]:
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise RecipeError(f"--set {item!r}: expected key=value")
        targets = range(len(stages))
        if key.startswith("stage."):
            _, number, key = key.split(".", 2)
            targets = [int(number) - 1]
        for t in targets:
            stages[t] = replace(stages[t], **{key: coerce(key, parse_value(text), f"--set {item}")})
    return stages
