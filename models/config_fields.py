"""What a config.json may hold, checked before a model is built from it: every field the build reads has a type
and a range, so a damaged or hostile file is a one-line CheckpointError naming the field, never a traceback, a
loop building millions of modules or an allocation of terabytes. Fields the build does not read are left to
transformers' own checks (models/registry.py turns those into the same one-line error)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from transformers.activations import ACT2FN
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from runtime.errors import CheckpointError

from .projector import PROJECTORS

# Sizes far beyond every released model, yet small enough that building the module tree stays quick.
MAX_LAYERS = 256  # the deepest released decoder has 126 layers (Llama 3.1 405B)
MAX_WIDTH = 1 << 17  # 131072; the widest released MLP is 53248 (Llama 3.1 405B)
MAX_HEADS = 1024  # Llama 3.1 405B has 128
MAX_VOCAB = 1 << 21  # 2097152; the largest released vocabularies hold 256k tokens
MAX_POSITIONS = 1 << 24  # 16M; the longest released context is 10M
MAX_IMAGE = 4096  # pixels per side; the released models read 336 to 1344
MAX_PATCH = 64  # pixels per patch side; the released encoders use 4 to 16
MAX_STAGES = 8  # ConvNeXt stages; the released ones have 4
MAX_TILES = 256  # image tiles; Eagle2.5 uses at most 12
MAX_PATCHES = 1 << 14  # Pix2Struct's patch budget; the released processors use 2048 to 4096
DTYPES = ("float32", "float16", "bfloat16", "float64")


ABSENT = object()  # the value of a field that is needed but left out


class Invalid(Exception):
    """A field that is not what the build needs: where it is and what it must be."""

    def __init__(self, path: str, value: Any, expected: str):
        super().__init__(f"{path} is {'missing' if value is ABSENT else shown(value)}; it must be {expected}")


def one_line(message: str, limit: int = 240) -> str:
    """`message` on one line (runs of whitespace become a space), cut after `limit` characters."""
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit] + "..."


def shown(value: Any) -> str:
    """A value as a short line of its repr."""
    return one_line(repr(value), 60)


Check = Callable[[Any, str], None]  # raises Invalid


def whole(low: int, high: int, why: str = "") -> Check:
    def check(value: Any, path: str) -> None:
        if type(value) is not int or not low <= value <= high:
            raise Invalid(path, value, f"an integer from {low} to {high}{why}")
    return check


def number(low: float, high: float) -> Check:
    def check(value: Any, path: str) -> None:
        if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
            raise Invalid(path, value, f"a number from {low:g} to {high:g}")
    return check


def flag(value: Any, path: str) -> None:
    if type(value) is not bool:
        raise Invalid(path, value, "true or false")


def text(value: Any, path: str) -> None:
    if type(value) is not str:
        raise Invalid(path, value, "a string")


def one_of(*choices: str) -> Check:
    def check(value: Any, path: str) -> None:
        if type(value) is not str or value not in choices:
            raise Invalid(path, value, f"one of {', '.join(choices)}")
    return check


def matching(pattern: re.Pattern, description: str) -> Check:
    def check(value: Any, path: str) -> None:
        if type(value) is not str or not pattern.fullmatch(value):
            raise Invalid(path, value, description)
    return check


def nullable(inner: Check) -> Check:
    def check(value: Any, path: str) -> None:
        if value is not None:
            inner(value, path)
    return check


def items(inner: Check, low: int, high: int) -> Check:
    """A list of `low` to `high` entries, each passing `inner`."""
    def check(value: Any, path: str) -> None:
        if type(value) is not list or not low <= len(value) <= high:
            raise Invalid(path, value, f"a list of {low} to {high} entries")
        for i, entry in enumerate(value):
            inner(entry, f"{path}[{i}]")
    return check


def labels(value: Any, path: str) -> None:
    """id2label: class ids (decimal strings in JSON, integers in a config object's dict) to names."""
    if value is None:
        return
    if type(value) is not dict:
        raise Invalid(path, value, "an object of class ids to names")
    for key, name in value.items():
        is_id = type(key) is int or (type(key) is str and re.fullmatch(r"-?\d{1,9}", key))
        if not is_id or type(name) is not str:
            raise Invalid(f"{path}[{shown(key)}]", name, "a name under a class id such as \"0\"")


# What each rope_type needs besides rope_type and rope_theta (transformers' _validate_*_rope_parameters).
ROPE_NEEDS = {"default": (), "linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
              "longrope": ("short_factor", "long_factor"), "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
              "proportional": ()}


def rope(value: Any, path: str) -> None:
    """rope_parameters (rope_scaling before transformers 5): a known rope_type with what it needs, positive numbers."""
    if value is None:
        return
    if type(value) is not dict:
        raise Invalid(path, value, "an object with rope_type and rope_theta")
    kind = value.get("rope_type", value.get("type", "default"))
    one_of(*sorted(ROPE_NEEDS))(kind, f"{path}.rope_type")
    for key in ROPE_NEEDS[kind]:
        if key not in value:
            raise Invalid(f"{path}.{key}", ABSENT, f"set: rope_type {kind} needs {', '.join(ROPE_NEEDS[kind])}")
    for key, entry in value.items():
        if key in ("short_factor", "long_factor"):
            items(number(-1e12, 1e12), 0, MAX_WIDTH)(entry, f"{path}.{key}")
        elif key == "original_max_position_embeddings":
            whole(1, MAX_POSITIONS)(entry, f"{path}.{key}")
        elif key == "truncate":
            flag(entry, f"{path}.{key}")
        elif key not in ("rope_type", "type"):
            number(1e-6, 1e12)(entry, f"{path}.{key}")


@dataclass(frozen=True)
class Section:
    """A JSON object: a check per field it may hold (absent means the default) and checks across fields,
    which read `defaults` for fields left out. `closed` refuses fields it does not list."""

    fields: dict[str, Check]
    defaults: dict[str, Any] = field(default_factory=dict)
    relations: tuple[Callable[[dict, str], None], ...] = ()
    closed: bool = False

    def __call__(self, value: Any, path: str) -> None:
        if type(value) is not dict:
            raise Invalid(path, value, "an object")
        prefix = f"{path}." if path else ""
        for key, entry in value.items():
            if key in self.fields:
                self.fields[key](entry, prefix + key)
            elif self.closed:
                raise Invalid(prefix + key, entry, f"left out: {path} knows only {', '.join(self.fields)}")
        merged = {**self.defaults, **value}
        for relation in self.relations:
            relation(merged, prefix)

    def extend(self, fields: dict[str, Check], defaults: dict[str, Any] | None = None,
               relations: tuple = ()) -> Section:
        return Section({**self.fields, **fields}, {**self.defaults, **(defaults or {})},
                       self.relations + relations, self.closed)


def divides(part: str, whole_field: str, why: str) -> Callable[[dict, str], None]:
    """`whole_field` must be a multiple of `part` (when both are set)."""
    def relation(config: dict, prefix: str) -> None:
        a, b = config.get(part), config.get(whole_field)
        if a and b and b % a:
            raise Invalid(prefix + whole_field, b, f"a multiple of {part} ({a}){why}")
    return relation


def at_most(small: str, large: str) -> Callable[[dict, str], None]:
    def relation(config: dict, prefix: str) -> None:
        a, b = config.get(small), config.get(large)
        if a is not None and b is not None and a > b:
            raise Invalid(prefix + small, a, f"at most {large} ({b})")
    return relation


def head_width(config: dict, prefix: str) -> None:
    """Without head_dim each head is hidden_size / num_attention_heads wide; rotary embeddings turn pairs of
    channels, so a head is an even number wide (transformers allows the test models' heads of 4 or fewer)."""
    if config.get("head_dim") is None:
        divides("num_attention_heads", "hidden_size", "")(config, prefix)
    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if head > 4 and head % 2:
        name = "head_dim" if config.get("head_dim") else "hidden_size"
        raise Invalid(prefix + name, config[name], f"such that a head is an even number wide (it is {head})")


def pad_in_vocabulary(config: dict, prefix: str) -> None:
    """The embedding's padding row must exist (a negative id counts from the end, as in torch)."""
    pad, vocab = config.get("pad_token_id"), config.get("vocab_size")
    if type(pad) is int and vocab and not -vocab <= pad < vocab:
        raise Invalid(prefix + "pad_token_id", pad, f"null or a token id below vocab_size ({vocab})")


LAYERS = whole(1, MAX_LAYERS, " (no released model has more than 126 layers)")
WIDTH = whole(1, MAX_WIDTH, " (no released model is wider than 53248)")
HEADS = whole(1, MAX_HEADS)
IMAGE = whole(1, MAX_IMAGE, " pixels")
PATCH = whole(1, MAX_PATCH, " pixels")
EPS = number(0, 1)
ACTIVATION = one_of(*sorted(ACT2FN))

# Every transformers config: the fields its constructor reads in ways its type checks do not cover.
DTYPE = nullable(one_of(*DTYPES))
PRETRAINED = Section({"id2label": labels, "dtype": DTYPE, "torch_dtype": DTYPE, "architectures": nullable(items(text, 0, 64))})

# The Llama and Qwen2 decoders (LlamaConfig and Qwen2Config share these defaults).
DECODER = PRETRAINED.extend(
    {"vocab_size": whole(1, MAX_VOCAB, " (the largest released vocabularies hold 256k tokens)"),
     "hidden_size": WIDTH, "intermediate_size": WIDTH, "num_hidden_layers": LAYERS,
     "num_attention_heads": HEADS, "num_key_value_heads": nullable(HEADS), "head_dim": nullable(WIDTH),
     "max_position_embeddings": whole(1, MAX_POSITIONS, " (the longest released context is 10M)"),
     "rms_norm_eps": EPS, "hidden_act": ACTIVATION, "rope_theta": number(1e-3, 1e12),
     "rope_parameters": rope, "rope_scaling": rope, "pad_token_id": nullable(whole(-MAX_VOCAB, MAX_VOCAB))},
    defaults={"vocab_size": 32000, "hidden_size": 4096, "num_attention_heads": 32},
    relations=(head_width, divides("num_key_value_heads", "num_attention_heads", ""), pad_in_vocabulary),
)

# The ViT of SigLIP, CLIP and SAM (defaults: SigLIP's and CLIP's base size).
VISION = PRETRAINED.extend(
    {"hidden_size": WIDTH, "intermediate_size": WIDTH, "projection_dim": WIDTH, "num_hidden_layers": LAYERS,
     "num_attention_heads": HEADS, "num_channels": whole(1, 4), "image_size": IMAGE, "patch_size": PATCH,
     "hidden_act": ACTIVATION, "layer_norm_eps": EPS},
    defaults={"hidden_size": 768, "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
    relations=(divides("num_attention_heads", "hidden_size", " (the width of a head)"),
               at_most("patch_size", "image_size")),
)

PROJECTOR = matching(PROJECTORS, "linear or mlp<N>x_gelu with N from 1 to 9 (the released models use mlp2x_gelu)")

EVE = DECODER.extend(
    {"mm_vision_tower": nullable(text), "mm_hidden_size": WIDTH, "mm_projector_type": PROJECTOR,
     "mm_vision_select_layer": whole(-MAX_LAYERS, MAX_LAYERS), "image_size": nullable(IMAGE),
     "image_size_clip": IMAGE, "patch_stride": PATCH, "conv_stride": whole(1, 8), "pel_num_heads": HEADS,
     "pal_layer_rate": LAYERS, "pal_num_heads": HEADS, "clip_vision_config": nullable(VISION)},
    defaults={"mm_hidden_size": 1024, "pel_num_heads": 8, "patch_stride": 14, "image_size_clip": 336},
    relations=(divides("pel_num_heads", "mm_hidden_size", " (the width of a head)"),
               at_most("patch_stride", "image_size_clip")),
)

EVEV2 = DECODER.extend(
    {"mm_vision_tower": nullable(text), "mm_hidden_size": WIDTH, "add_moe": flag, "moe_part": nullable(text),
     "max_size": nullable(IMAGE), "patch_stride": PATCH, "dense_stride": whole(1, 8)},
    defaults={"mm_hidden_size": 1024, "patch_stride": 16},
)

EAGLE2_5 = PRETRAINED.extend(
    {"vision_config": nullable(VISION), "text_config": nullable(DECODER), "llm_config": nullable(DECODER),
     "mlp_connector_layers": whole(1, 9),
     "select_layer": whole(-MAX_LAYERS, MAX_LAYERS), "force_image_size": nullable(IMAGE),
     "downsample_ratio": number(0.125, 1), "dynamic_image_size": flag, "use_thumbnail": flag,
     "min_dynamic_tiles": whole(1, MAX_TILES), "max_dynamic_tiles": whole(1, MAX_TILES), "use_pixel_shuffle": flag,
     "template": nullable(text),
     "image_token_index": nullable(whole(0, MAX_VOCAB))},
)


def same_length(a: str, b: str) -> Callable[[dict, str], None]:
    def relation(config: dict, prefix: str) -> None:
        if len(config[a]) != len(config[b]):
            raise Invalid(prefix + b, config[b], f"a list as long as {a} ({len(config[a])} entries)")
    return relation


def total_depth(config: dict, prefix: str) -> None:
    if sum(config["depths"]) > MAX_LAYERS:
        raise Invalid(prefix + "depths", config["depths"], f"at most {MAX_LAYERS} blocks in all")


def rotary_heads(config: dict, prefix: str) -> None:
    """EVA's 2D rotary embedding turns pairs of channels by row and by column: a head is a multiple of 4 wide."""
    if config["embed_dim"] % (4 * config["num_heads"]):
        raise Invalid(prefix + "embed_dim", config["embed_dim"], f"a multiple of 4 x num_heads ({config['num_heads']})")


# Eagle v1's vision experts, each overriding the published architecture (models/eagle_v1/).
CLIP_EXPERT = VISION.extend({}, defaults={"hidden_size": 1024, "num_attention_heads": 16, "image_size": 336,
                                          "patch_size": 14})
CONVNEXT_EXPERT = Section(
    {"depths": items(LAYERS, 1, MAX_STAGES), "dims": items(WIDTH, 1, MAX_STAGES), "kernel_size": whole(1, 31),
     "patch_size": PATCH, "mlp_ratio": whole(1, 16), "norm_eps": EPS, "ls_init_value": number(-1e6, 1e6)},
    defaults={"depths": [3, 4, 30, 3], "dims": [384, 768, 1536, 3072]},
    relations=(same_length("depths", "dims"), total_depth), closed=True,
)
SAM_EXPERT = VISION.extend(
    {"output_channels": WIDTH, "mlp_dim": nullable(WIDTH), "mlp_ratio": number(0.01, 64),
     "window_size": whole(1, MAX_IMAGE), "global_attn_indexes": items(whole(-MAX_LAYERS, MAX_LAYERS), 0, MAX_LAYERS),
     "num_pos_feats": WIDTH},
    defaults={"hidden_size": 1024, "num_attention_heads": 16, "image_size": 1024},
)
DET_EXPERT = Section(
    {"embed_dim": WIDTH, "depth": LAYERS, "num_heads": HEADS, "patch_size": PATCH, "window_size": IMAGE,
     "window_block_indexes": items(whole(-MAX_LAYERS, MAX_LAYERS), 0, MAX_LAYERS), "mlp_ratio": number(0.01, 64),
     "pretrain_img_size": IMAGE, "pt_hw_seq_len": IMAGE, "norm_eps": EPS},
    defaults={"embed_dim": 1024, "num_heads": 16}, relations=(rotary_heads,), closed=True,
)
PIX2STRUCT_EXPERT = PRETRAINED.extend(
    {"hidden_size": WIDTH, "d_ff": WIDTH, "d_kv": WIDTH, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
     "patch_embed_hidden_size": WIDTH, "seq_len": whole(1, MAX_POSITIONS), "dense_act_fn": ACTIVATION,
     "layer_norm_eps": EPS, "max_patches": whole(1, MAX_PATCHES), "patch_size": PATCH},
)
EXPERTS = Section({"clip": nullable(CLIP_EXPERT), "convnext": nullable(CONVNEXT_EXPERT), "sam": nullable(SAM_EXPERT),
                   "det": nullable(DET_EXPERT), "pix2struct": nullable(PIX2STRUCT_EXPERT)}, closed=True)

EAGLE_V1 = DECODER.extend(
    {"mm_vision_tower": text, "mm_hidden_size": nullable(WIDTH), "mm_projector_type": PROJECTOR,
     "mm_vision_select_layer": whole(-MAX_LAYERS, MAX_LAYERS), "image_size": IMAGE, "grid_size": IMAGE,
     "vision_experts": nullable(EXPERTS), "conv_mode": nullable(text)},
)

# Eagle2-9B's MOB tower (models/eagle2_mixture.py): SigLIP beside ConvNeXt-XXLarge.
MIXTURE = Section(
    {"vision_path": text, "moe_version_type": nullable(text), "normalize_type": nullable(text),
     "mm_vision_select_layer": whole(-MAX_LAYERS, 1000), "grid_size": IMAGE, "convnext_img_size": IMAGE,
     "siglip_img_size": IMAGE, "siglip_vision_config": VISION,
     "convnext_config": CONVNEXT_EXPERT},  # Eagle v1's ConvNeXt expert builds it, with these overrides
)


def eagle2_tower(value: Any, path: str) -> None:
    """SigLIP's vision_config (1B, 2B) or the MOB mixture's (9B: model_type "MOB", as models/eagle2.py reads it)."""
    is_mixture = type(value) is dict and str(value.get("model_type", "")).startswith("MOB")
    (MIXTURE if is_mixture else VISION)(value, path)


# Eagle2 under upstream's names.
EAGLE2 = PRETRAINED.extend(
    {"vision_config": nullable(eagle2_tower), "llm_config": nullable(DECODER),
     "select_layer": whole(-MAX_LAYERS, MAX_LAYERS), "force_image_size": nullable(IMAGE),
     "downsample_ratio": number(0.125, 1), "dynamic_image_size": flag, "use_thumbnail": flag,
     "min_dynamic_patch": whole(1, MAX_TILES), "max_dynamic_patch": whole(1, MAX_TILES), "template": nullable(text)},
)


def check_config(config: dict, fields: Section, where: str) -> None:
    """A one-line CheckpointError naming the first field of `config` that `fields` refuses."""
    try:
        fields(config, "")
    except Invalid as e:
        message = f"{where}: {e}; correct config.json or download the checkpoint again"
        raise CheckpointError(one_line(message, 400)) from None
