"""Random-weight checkpoints of the released models' shapes, written the way the releases are: sharded
safetensors + `model.safetensors.index.json` in the release's dtype, config.json with the released fields, and
a tokenizer the runtime loads.

    python bench/random_checkpoint.py eve-1b --out .tmp/realsize/checkpoints/eve-1b
    python bench/random_checkpoint.py --list

The model is never in memory: its module tree is built on the meta device (every key and shape, no storage),
and each tensor is generated in chunks and streamed into its shard, so the writer's peak RSS stays at a few
hundred MB whatever the size. Values keep fp16 activations finite through the layers: weights ~ N(0,
initializer_range), norm weights 1, biases 0; each tensor drawn from its own seed (the same values whatever
the shard size).

The tokenizer is BPE trained on the synthetic benchmark's text (runtime/eval/synthetic.py), padded with filler
pieces to the released tokenizer's size: 32000 for the Llama models (= their config vocabulary), 151643
regular pieces + the special tokens for Qwen2 (below the config's 151936 / 152064, as released). Config ids
(bos, eos, pad, image token) are the tokenizer's.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: the repository's packages

from bench.decode import peak_rss_mb  # noqa: E402

DTYPES = {"float16": "F16", "bfloat16": "BF16"}  # torch dtype name -> safetensors dtype code
CHUNK_ELEMENTS = 1 << 22  # generated per step: 16 MB of float32 before the cast
INDEX = "model.safetensors.index.json"

# --- the released configurations (config.json fields as published) --------------------------------------

TINYLLAMA_1B = dict(  # TinyLlama/TinyLlama-1.1B-Chat-v1.0
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
    num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
    hidden_act="silu", initializer_range=0.02, attention_bias=False, pretraining_tp=1, tie_word_embeddings=False,
    use_cache=True, bos_token_id=1, eos_token_id=2,
)
VICUNA_7B = dict(  # lmsys/vicuna-7b-v1.5
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
    hidden_act="silu", initializer_range=0.02, pretraining_tp=1, tie_word_embeddings=False, use_cache=True,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
LLAMA_110M = dict(  # bench/decode.py's 110m decoder (cpu-decode-anchors.md), for testing the harness
    VICUNA_7B, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
    num_key_value_heads=12, max_position_embeddings=2048,
)
QWEN25_7B = dict(  # Qwen/Qwen2.5-7B-Instruct
    architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064, hidden_size=3584,
    intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    max_position_embeddings=32768, max_window_layers=28, sliding_window=131072, use_sliding_window=False,
    rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None, hidden_act="silu", initializer_range=0.02,
    attention_dropout=0.0, tie_word_embeddings=False, use_cache=True, bos_token_id=151643, eos_token_id=151645,
)
QWEN25_05B = dict(  # Qwen/Qwen2.5-0.5B-Instruct
    QWEN25_7B, vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_window_layers=21, sliding_window=32768,
    tie_word_embeddings=True,
)
SIGLIP_SO400M = dict(  # google/siglip-so400m-patch14-384's vision tower, at Eagle's 448 px tile
    model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
    num_attention_heads=16, patch_size=14, image_size=448, num_channels=3, hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6, attention_dropout=0.0,
)
EVE_FIELDS = dict(  # EVE v1's multimodal fields (EVEv1 eve_arch.py, train.py; research notes B3)
    model_type="eve", architectures=["EVELlamaForCausalLM"], mm_vision_tower="openai/eve-patch14-anypixel-672",
    mm_vision_tower_clip="openai/clip-vit-large-patch14-336", requires_cliploss=True, mm_hidden_size=1024,
    mm_projector_type="mlp2x_gelu", use_mm_proj=True, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
    mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="square", image_grid_pinpoints=None,
    tune_mm_mlp_adapter=False, mm_projector_lr=None, vision_tower_lr=None, tokenizer_padding_side="right",
    tokenizer_model_max_length=2048,
)
EAGLE_X5_FIELDS = dict(  # Eagle v1's multimodal fields (EAGLE eagle_arch.py, train.py; research notes A3)
    model_type="eagle_llama", architectures=["EagleLlamaForCausalLM"],
    mm_vision_tower="clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024", mm_hidden_size=7680,
    mm_projector_type="mlp2x_gelu", use_mm_proj=True, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
    mm_patch_merge_type="flat", image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False,
    tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, mm_projector_lr=None, tokenizer_padding_side="right",
    tokenizer_model_max_length=2048,
)
EAGLE2_5_FIELDS = dict(  # Eagle2.5's fields (vLLM eagle2_5_vl.py, the Eagle2 preprocessor config)
    model_type="eagle_2_5_vl", architectures=["Eagle2_5_VLForConditionalGeneration"], select_layer=-1,
    force_image_size=448, downsample_ratio=0.5, dynamic_image_size=True, use_thumbnail=True, min_dynamic_tiles=1,
    max_dynamic_tiles=12, template="qwen2-chat", use_pixel_shuffle=True, mlp_connector_layers=2,
)
EAGLE2_FIELDS = dict(  # Eagle2-1B/2B's fields (HF configuration_eagle2.py; research notes A6)
    model_type="eagle_chat", architectures=["Eagle2ChatModel"], select_layer=-1, force_image_size=448,
    downsample_ratio=0.5, template="qwen2-chat", dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1,
    max_dynamic_patch=12, use_backbone_lora=0, use_llm_lora=0, keep_aspect_ratio=False, pre_feature_reduction=False,
    mlp_checkpoint=True,
)


@dataclass(frozen=True)
class Preset:
    about: str
    config: dict  # config.json as released, less the tokenizer's ids (filled in from the tokenizer)
    dtype: str  # as released: "float16" or "bfloat16"
    tokenizer: str  # "llama" (SentencePiece-like, specials first) or "qwen2" (byte-level, specials last)
    tokenizer_size: int  # ids the released tokenizer has (regular pieces + its special tokens here)


QWEN2_TOKENIZER = 151643 + 6  # Qwen2's 151643 regular pieces, then Aerie's 6 Qwen2 special tokens

PRESETS: dict[str, Preset] = {
    "eve-110m": Preset("EVE v1 layout, bench/decode.py's 110m Llama decoder, EVE's 1024-wide PEL at 672 px "
                       "(for testing the harness)", dict(EVE_FIELDS, **LLAMA_110M), "float16", "llama", 32000),
    "eve-1b": Preset("EVE v1 layout, TinyLlama-1.1B's decoder, EVE's 1024-wide PEL at 672 px",
                     dict(EVE_FIELDS, **TINYLLAMA_1B), "float16", "llama", 32000),
    "eve-7b": Preset("EVE-7B v1.0: Vicuna-7B-v1.5 decoder, EVE's 1024-wide PEL at 672 px",
                     dict(EVE_FIELDS, **VICUNA_7B), "float16", "llama", 32000),
    "eagle2-1b": Preset("Eagle2-1B: SigLIP-so400m + Qwen2.5-0.5B-Instruct",
                        dict(EAGLE2_FIELDS, vision_config=SIGLIP_SO400M, llm_config=QWEN25_05B),
                        "bfloat16", "qwen2", QWEN2_TOKENIZER),
    "eagle2_5-8b": Preset("Eagle2.5-8B: SigLIP-so400m + Qwen2.5-7B-Instruct",
                          dict(EAGLE2_5_FIELDS, vision_config=SIGLIP_SO400M, text_config=QWEN25_7B),
                          "bfloat16", "qwen2", QWEN2_TOKENIZER),
    "eagle_x5-7b": Preset("Eagle-X5-7B: CLIP-L, ConvNeXt-XXL, SAM-L, EVA-02-L, Pix2Struct-L + Vicuna-7B-v1.5",
                          dict(EAGLE_X5_FIELDS, **VICUNA_7B), "bfloat16", "llama", 32000),
}


# --- keys, shapes and values -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    key: str
    shape: tuple[int, ...]
    fill: str  # "normal", "ones" or "zeros"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def meta_model(config: dict):
    """The family's model of `config` on the meta device: every module, key and shape, no storage."""
    import torch

    from models.registry import detect_family

    with torch.device("meta"):
        return detect_family(config).build(config, False)


def checkpoint_entries(model) -> list[Entry]:
    """Every tensor a saved checkpoint of `model` holds, in module order (a tied lm_head is not saved), and
    how to fill it: norm weights 1, biases 0, the rest normal."""
    norms = {name for name, module in model.named_modules() if "Norm" in type(module).__name__}
    parameters = dict(model.named_parameters())  # a tied lm_head shares the embedding: listed once
    buffers = [k for k in model.state_dict() if k not in parameters and not k.endswith("lm_head.weight")]
    if buffers:
        raise ValueError(f"the model saves buffers whose values a random checkpoint cannot invent: {buffers[:4]}")
    entries = []
    for key, param in parameters.items():
        module, _, leaf = key.rpartition(".")
        fill = "ones" if module in norms and leaf == "weight" else "zeros" if leaf.endswith("bias") else "normal"
        entries.append(Entry(key, tuple(param.shape), fill))
    return entries


def plan_shards(entries: list[Entry], itemsize: int, max_bytes: int) -> list[list[Entry]]:
    """Consecutive tensors into shards of at most `max_bytes` (a larger tensor gets a shard of its own)."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        nbytes = entry.numel * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_values(f: BinaryIO, entry: Entry, dtype, std: float, seed: int) -> None:
    """The tensor's bytes in row-major order, CHUNK_ELEMENTS at a time."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(entry.key.encode()))
    for start in range(0, entry.numel, CHUNK_ELEMENTS):
        n = min(CHUNK_ELEMENTS, entry.numel - start)
        if entry.fill == "normal":
            chunk = torch.empty(n).normal_(0.0, std, generator=generator).to(dtype)
        else:
            chunk = (torch.ones if entry.fill == "ones" else torch.zeros)(n, dtype=dtype)
        f.write(chunk.view(torch.uint8).numpy().data)


def write_shard(path: Path, entries: list[Entry], dtype_name: str, std: float, seed: int) -> int:
    """One safetensors file, streamed: the header (keys, dtypes, shapes, offsets), then each tensor's bytes."""
    import torch

    dtype = getattr(torch, dtype_name)
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.key] = {"dtype": DTYPES[dtype_name], "shape": list(e.shape), "data_offsets": [offset, offset + e.numel * itemsize]}
        offset += e.numel * itemsize
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for e in entries:
            write_values(f, e, dtype, std, seed)
    return offset


# --- the tokenizer ---------------------------------------------------------------------------------------


def filler_pieces(style: str, taken: set[str]) -> Iterable[str]:
    """Pieces no text encodes to (no merge makes them) that decode to ' <n>'."""
    space = "\u2581" if style == "llama" else "\u0120"  # SentencePiece's and byte-level BPE's space
    n = 0
    while True:
        piece = f"{space}<{n}>"
        if piece not in taken:
            yield piece
        n += 1


def release_tokenizer(style: str, size: int):
    """A BPE tokenizer of `size` ids: trained on the synthetic benchmark's text, padded with filler pieces;
    special tokens first (Llama: <unk> <s> </s> = 0 1 2) or last (Qwen2: <|endoftext|> = 151643, ...)."""
    from tokenizers import Tokenizer

    from models.tokenizer_build import SPECIALS, train_tiny_tokenizer
    from runtime.eval.synthetic import corpus

    trained = json.loads(train_tiny_tokenizer(corpus(), style, vocab_size=4096).to_str())
    vocab: dict[str, int] = trained["model"]["vocab"]
    specials = SPECIALS[style]
    regular = [p for p in sorted(vocab, key=vocab.get) if p not in specials]
    fillers = filler_pieces(style, set(vocab))
    regular += [next(fillers) for _ in range(size - len(specials) - len(regular))]
    order = [*specials, *regular] if style == "llama" else [*regular, *specials]
    trained["model"]["vocab"] = {piece: i for i, piece in enumerate(order)}
    for added in trained["added_tokens"]:
        added["id"] = trained["model"]["vocab"][added["content"]]
    return Tokenizer.from_str(json.dumps(trained))


def tokenizer_ids(tok, style: str) -> dict:
    """The config fields that name token ids, from the tokenizer."""
    if style == "llama":
        return dict(bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"), pad_token_id=tok.token_to_id("<unk>"))
    return dict(bos_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=tok.token_to_id("<|im_end|>"))


def release_config(preset: Preset, tok, dtype: str) -> dict:
    """config.json: the preset's fields, the dtype, and the tokenizer's ids where the config names them."""
    config = json.loads(json.dumps(preset.config))  # a deep copy
    ids = tokenizer_ids(tok, preset.tokenizer)
    if config["model_type"] in ("eagle_2_5_vl", "eagle_chat"):
        config["llm_config" if "llm_config" in config else "text_config"].update(ids, torch_dtype=dtype)
        if config["model_type"] == "eagle_2_5_vl":
            config["image_token_index"] = tok.token_to_id("<IMG_CONTEXT>")
    else:
        config.update({k: v for k, v in ids.items() if k in config})
    config["torch_dtype"] = dtype
    return config


# --- the checkpoint --------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a number of bytes (GB = 10^9, as Hugging Face's max_shard_size)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not found or found.group(2).upper() not in units:
        raise ValueError(f"not a size: {text!r}; write e.g. 5GB, 500MB or a number of bytes")
    return int(float(found.group(1)) * units[found.group(2).upper()])


def is_complete(directory: Path) -> bool:
    """Whether `directory` holds a checkpoint this writer finished (it appears only once written whole)."""
    if not (directory / "config.json").is_file() or not (directory / "tokenizer.json").is_file():
        return False
    index = directory / INDEX
    if not index.is_file():
        return (directory / "model.safetensors").is_file()
    return all((directory / name).is_file() for name in set(json.loads(index.read_text())["weight_map"].values()))


def write_checkpoint(preset: Preset, out: Path, dtype: str | None = None, shard_bytes: int = 5 * 10**9,
                     seed: int = 0) -> dict:
    """Write the preset's checkpoint into `out` (built in a hidden directory beside it, moved in place at the
    end); returns what was written: parameters, bytes, shards, seconds, the writer's peak RSS."""
    import torch

    from models.tokenizer_build import save_tokenizer, tokenizer_config

    start = time.perf_counter()
    dtype = dtype or preset.dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: a release is {' or '.join(DTYPES)}")
    tok = release_tokenizer(preset.tokenizer, preset.tokenizer_size)
    config = release_config(preset, tok, dtype)
    model = meta_model(config)
    entries = checkpoint_entries(model)
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    total = sum(e.numel for e in entries) * itemsize
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < total * 1.02 + 2**27:
        raise OSError(f"the checkpoint takes {total / 1e9:.1f} GB and {out.parent} has {free / 1e9:.1f} GB free; "
                      "free some space or write it elsewhere (--out)")
    work = out.parent / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    std = config.get("initializer_range") or config.get("text_config", {}).get("initializer_range") or 0.02
    shards = plan_shards(entries, itemsize, shard_bytes)
    names = shard_names(len(shards))
    weight_map = {}
    for i, (name, shard) in enumerate(zip(names, shards), 1):
        size = write_shard(work / name, shard, dtype, std, seed)
        weight_map.update({e.key: name for e in shard})
        print(f"  {name}: {len(shard)} tensors, {size / 1e9:.2f} GB ({i}/{len(shards)}, "
              f"{time.perf_counter() - start:.0f} s)", flush=True)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (work / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    save_tokenizer(tok, tokenizer_config(preset.tokenizer), work)
    (work / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return {"parameters": sum(e.numel for e in entries), "bytes": total, "dtype": dtype, "shards": len(shards),
            "seconds": round(time.perf_counter() - start, 1), "writer_peak_rss_mb": round(peak_rss_mb(), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preset", nargs="?", choices=PRESETS)
    p.add_argument("--out", type=Path, help="checkpoint directory to write (replaced if it exists)")
    p.add_argument("--dtype", choices=DTYPES, help="default: the release's")
    p.add_argument("--shard-size", default="5GB", help="largest shard (default 5GB, as the releases)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the presets")
    args = p.parse_args(argv)
    if args.list or args.preset is None:
        for name, preset in PRESETS.items():
            print(f"{name:<12} {preset.dtype:<9} {preset.about}")
        return 0
    if args.out is None:
        p.error("--out is required")
    try:
        shard_bytes = parse_size(args.shard_size)
    except ValueError as e:
        p.error(str(e))
    try:
        summary = write_checkpoint(PRESETS[args.preset], args.out, args.dtype, shard_bytes, args.seed)
    except OSError as e:
        print(f"random_checkpoint.py: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {summary['parameters'] / 1e9:.3f} B parameters, {summary['bytes'] / 1e9:.2f} GB "
          f"{summary['dtype']} in {summary['shards']} shard(s), {summary['seconds']} s, writer peak RSS "
          f"{summary['writer_peak_rss_mb']:.0f} MB")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
