"""The starting checkpoint of a full-scale run: a pretrained LLM (and vision encoder) in a new VLM.

    python -m training.compose --family eve --llm vicuna-7b-v1.5/ --clip clip-vit-large-patch14-336/ --out eve-init/
    python -m training.compose --family eagle2_5 --llm Qwen2.5-7B-Instruct/ --vision siglip-so400m/ --out eagle-init/
    python -m training.compose --family evev2 --llm Qwen2.5-7B-Instruct/ --out evev2-init/ --set max_size=800

EVE (models.md §B1, §B3): the Vicuna weights keep their keys (`model.*`, `lm_head.*`); the CLIP-L/14-336
teacher goes under `model.vision_clip.backbone.vision_model.*`; the PEL, projector and patch aligner start
fresh. Eagle2.5 (§A6): Qwen2 under `language_model.*`, SigLIP under `vision_model.vision_model.*`, `mlp1`
fresh. EVEv2 (§B7): Qwen2.5 keeps its keys; every layer's image copies (`moe_*`) start as its text weights
(upstream's `0_notrain_copy_llm_weight_into_moe.sh`), the patch-embedding layer fresh. The tokenizer files come
from the LLM's directory.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from models.checkpoint import build_model, read_config, read_state_dict, save_model
from models.evev2 import copy_text_weights_into_image_copies
from models.registry import detect_family, is_ignored
from runtime.arguments import Parser
from runtime.errors import AerieError, CheckpointError

from .release import copy_tokenizer

HF_META = ("architectures", "auto_map", "transformers_version", "_name_or_path", "torch_dtype", "dtype", "model_type")


def clean(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in HF_META}


def vision_part(config: dict) -> dict:
    """The vision config of a CLIP/SigLIP checkpoint: its `vision_config`, or the whole if vision-only."""
    return clean(config.get("vision_config", config))


def vision_weights(directory: Path, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP/SigLIP checkpoint's vision tower under `prefix` (keys `vision_model.*` in the full model)."""
    state = read_state_dict(directory)
    tower = {k.removeprefix("vision_model."): v for k, v in state.items() if k.startswith("vision_model.")}
    if not tower:  # a vision-only checkpoint saved without the prefix
        tower = {k: v for k, v in state.items() if not k.startswith(("text_model.", "logit_", "visual_projection", "text_projection"))}
    return {prefix + k: v for k, v in tower.items()}


def compose(family: str, llm: Path, out: Path, vision: Path | None = None, overrides: dict | None = None) -> Path:
    """Write `out`: the new model with the pretrained weights loaded; returns `out`."""
    llm_config, llm_state = read_config(llm), read_state_dict(llm)
    if family == "eve":
        config = {**clean(llm_config), "model_type": "eve", **(overrides or {})}
        if vision is not None:
            config["clip_vision_config"] = vision_part(read_config(vision))
        state = dict(llm_state)
        if vision is not None:
            state.update(vision_weights(vision, "model.vision_clip.backbone.vision_model."))
        fresh = (r"^model\.vision_tower\.", r"^model\.mm_projector\.", r"^model\.vision_tower_compressor\.")
        if vision is None:
            fresh += (r"^model\.vision_clip\.",)
    elif family == "eagle2_5":
        if vision is None:
            raise AerieError("Eagle2.5 needs --vision (a SigLIP checkpoint)")
        config = {"model_type": "eagle_2_5_vl", "text_config": clean(llm_config),
                  "vision_config": vision_part(read_config(vision)), **(overrides or {})}
        state = {"language_model." + k: v for k, v in llm_state.items()}
        state.update(vision_weights(vision, "vision_model.vision_model."))
        fresh = (r"^mlp1\.",)
    elif family == "evev2":
        config = {**clean(llm_config), "model_type": "eve-qwen2", **(overrides or {})}
        state = dict(llm_state)
        fresh = (r"^model\.vision_tower\.", r"\.moe_")
    else:
        raise AerieError(f"compose knows eve, eagle2_5 and evev2, not {family!r}")
    model = build_model(config, training=True)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not any(re.search(p, k) for p in fresh)]
    tied = getattr(model.config, "tie_word_embeddings", False) or getattr(getattr(model.config, "text_config", None), "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    # Keys the family ignores at inference (SigLIP's pooling head) or recomputes are not needed either.
    family_info = detect_family(config)
    unexpected = [k for k in state if k not in expected and not is_ignored(family_info, k)
                  and not k.endswith(("rotary_emb.inv_freq", "position_ids"))]
    if missing or unexpected:
        raise CheckpointError(f"the pretrained weights do not fit the composed {family} model: "
                              f"missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}")
    for key, value in state.items():
        if key in expected and value.shape != expected[key].shape:
            raise CheckpointError(f"{key}: pretrained shape {tuple(value.shape)} but the model has {tuple(expected[key].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    if family == "evev2":
        copy_text_weights_into_image_copies(model)
    save_model(model, out)
    copy_tokenizer(llm, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m training.compose",
                    description="Build a VLM's starting checkpoint from a pretrained LLM and vision encoder.")
    parser.add_argument("--family", required=True, choices=["eve", "eagle2_5", "evev2"], help="the model family to compose")
    parser.add_argument("--llm", required=True, metavar="DIR", help="Hugging Face LLM directory (Vicuna / Llama for EVE, Qwen2 for Eagle2.5 and EVEv2)")
    parser.add_argument("--clip", "--vision", dest="vision", metavar="DIR",
                        help="CLIP (EVE's teacher) or SigLIP (Eagle2.5) directory (default: none; Eagle2.5 needs one)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the composed checkpoint is written")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config field of the new model, e.g. --set image_size=1344 (value in TOML syntax)")
    args = parser.parse_args(argv)
    from .recipes import parse_value

    overrides = {k: parse_value(v) for k, _, v in (item.partition("=") for item in args.set)}
    try:
        out = compose(args.family, Path(args.llm), Path(args.out), Path(args.vision) if args.vision else None, overrides)
    except AerieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
