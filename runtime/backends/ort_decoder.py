"""The decoder engine on ONNX Runtime: the graph of export/decoder.py (docs/engine-format.md, "Decoder").

The KV cache is one buffer per layer and kind, [max_batch, kv_heads, max_length, head_dim], allocated
once. GroupQueryAttention gets the same memory as its past input and its present output, so a step
writes only the new positions. IO bindings are made once per slot (prefill) and per slot range
(decode) and reused: a decode step fills two small input buffers and runs, with no allocation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import AerieError, ContextOverflowError, ManifestError
from .base import check_prompt
from .onnx_graph import check_decoder_graph
from .ort_session import import_onnxruntime, open_session

ort = import_onnxruntime()

DTYPES = {"float32": np.float32, "float16": np.float16}
SCRATCH_BYTES = 256 * 1024**2  # attention scores of one prefill chunk (float32 whatever the dtype)


class OrtDecoder:
    """A `DecoderEngine` (backends/base.py) over `decoder/model.onnx` and `embed_tokens.npy`.

    spec: the manifest's decoder part (export/decoder.py writes it). max_length may shrink the context
    below the exported one to save memory; threads=None lets ONNX Runtime use every core. Prompts run
    in chunks of at most `prefill_chunk` tokens, fewer when the context is long: GroupQueryAttention's
    score scratch is heads x chunk x max_length floats, kept under SCRATCH_BYTES.
    """

    def __init__(self, engine_dir: str | Path, spec: dict, max_batch: int = 1, max_length: int | None = None,
                 threads: int | None = None, device: str = "cpu", prefill_chunk: int = 512):
        engine_dir = Path(engine_dir)
        if device != "cpu":
            # The KV buffers are host memory here; on CUDA they must live on the device (not built yet).
            raise AerieError(f"the ONNX Runtime decoder runs on the CPU only for now, not {device!r}; use --device cpu")
        if spec.get("dtype") not in DTYPES:
            raise ManifestError(f"decoder dtype {spec.get('dtype')!r} is not one this runtime runs ({sorted(DTYPES)}); "
                                "rebuild the engine")
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError(f"max_batch and prefill_chunk must be at least 1, got {max_batch}, {prefill_chunk}")
        self.dtype = DTYPES[spec["dtype"]]
        self.vocab_size = int(spec["vocab_size"])
        self.hidden_size = int(spec["hidden_size"])
        self.num_layers = int(spec["num_layers"])
        self.max_batch = max_batch
        self.max_length = min(int(max_length or spec["max_length"]), int(spec["max_length"]))
        scratch_per_token = int(spec["num_heads"]) * self.max_length * 4
        self.prefill_chunk = max(16, min(prefill_chunk, SCRATCH_BYTES // scratch_per_token))
        self.io_names = spec["io"]
        # EVEv2's graph routes each position to the text or the image weights by this mask (docs/design.md).
        self.routed = "visual_token_mask" in self.io_names
        self.embed_tokens = np.load(engine_dir / spec["embed_tokens"], mmap_mode="r")
        if self.embed_tokens.shape != (self.vocab_size, self.hidden_size):
            raise ManifestError(f"{engine_dir / spec['embed_tokens']}: shape {self.embed_tokens.shape}, the manifest says "
                                f"({self.vocab_size}, {self.hidden_size}); rebuild the engine")
        self.session = open_session(engine_dir / spec["model"], device, threads)
        check_decoder_graph(self.session, spec, engine_dir / spec["model"])  # before allocating max_length

        kv_shape = (max_batch, int(spec["num_kv_heads"]), self.max_length, int(spec["head_dim"]))
        # np.zeros maps untouched pages lazily: memory grows with the positions actually used.
        self.keys = [np.zeros(kv_shape, self.dtype) for _ in range(self.num_layers)]
        self.values = [np.zeros(kv_shape, self.dtype) for _ in range(self.num_layers)]
        self.lengths = np.zeros(max_batch, np.int64)
        self.logits = np.zeros((max_batch, 1, self.vocab_size), np.float32)
        self.step_embeds = np.zeros((max_batch, 1, self.hidden_size), self.dtype)
        self.step_mask = np.zeros((max_batch, 1), np.bool_)  # generated tokens are text
        self.step_seqlens = np.zeros(max_batch, np.int32)
        self.step_total = np.zeros((), np.int32)
        self.prefill_seqlens = np.zeros(1, np.int32)
        self.prefill_total = np.zeros((), np.int32)
        self._bindings: dict[tuple[str, int, int], ort.IOBinding] = {}

    # --- IO binding -----------------------------------------------------------------------------

    def _bind(self, io: ort.IOBinding, name: str, array: np.ndarray, output: bool = False) -> None:
        bind = io.bind_output if output else io.bind_input
        bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)

    def _binding(self, kind: str, lo: int, batch: int) -> ort.IOBinding:
        """The binding for slots lo .. lo+batch-1: KV views and logits rows, and for decode the step inputs."""
        key = (kind, lo, batch)
        io = self._bindings.get(key)
        if io is not None:
            return io
        io = self.session.io_binding()
        names = self.io_names
        for i in range(self.num_layers):
            for cache, past, present in ((self.keys, "past_key", "present_key"), (self.values, "past_value", "present_value")):
                view = cache[i][lo : lo + batch]
                self._bind(io, names[past].format(layer=i), view)
                self._bind(io, names[present].format(layer=i), view, output=True)
        self._bind(io, names["logits"], self.logits[:batch], output=True)
        if kind == "decode":
            self._bind(io, names["inputs_embeds"], self.step_embeds[:batch])
            if self.routed:
                self._bind(io, names["visual_token_mask"], self.step_mask[:batch])
            self._bind(io, names["seqlens_k"], self.step_seqlens[:batch])
            self._bind(io, names["total_sequence_length"], self.step_total)
        else:
            self._bind(io, names["seqlens_k"], self.prefill_seqlens)
            self._bind(io, names["total_sequence_length"], self.prefill_total)
        self._bindings[key] = io
        return io

    # --- embeddings -----------------------------------------------------------------------------

    def embed(self, input_ids: np.ndarray, image_table: np.ndarray | None, out: np.ndarray) -> None:
        """Rows of `out` [n, hidden]: ids below vocab_size from embed_tokens.npy, the rest from image_table."""
        is_image = input_ids >= self.vocab_size
        rows = np.where(is_image, 0, input_ids)
        if self.embed_tokens.dtype == out.dtype:
            np.take(self.embed_tokens, rows, axis=0, out=out)
        else:  # a float16 table in front of a float32 graph (quantized engines, export/decoder.py)
            out[...] = self.embed_tokens[rows]
        if is_image.any():
            out[is_image] = image_table[input_ids[is_image] - self.vocab_size]

    # --- DecoderEngine --------------------------------------------------------------------------

    def prefill(self, slot: int, input_ids: np.ndarray, image_table: np.ndarray | None) -> np.ndarray:
        self._check_slot(slot)
        input_ids = np.asarray(input_ids, np.int64).reshape(-1)
        check_prompt(input_ids, image_table, self.vocab_size, self.hidden_size, self.max_length)
        table = None if image_table is None else np.asarray(image_table, self.dtype)
        embeds = np.empty((1, input_ids.size, self.hidden_size), self.dtype)
        self.embed(input_ids, table, embeds[0])
        image_positions = (input_ids >= self.vocab_size)[None]
        io = self._binding("prefill", slot, 1)
        self.lengths[slot] = 0
        # Long prompts go in chunks: GroupQueryAttention's scores buffer is chunk x max_length per head.
        for start in range(0, input_ids.size, self.prefill_chunk):
            chunk = embeds[:, start : start + self.prefill_chunk]
            self._bind(io, self.io_names["inputs_embeds"], chunk)
            if self.routed:
                self._bind(io, self.io_names["visual_token_mask"], image_positions[:, start : start + chunk.shape[1]])
            end = start + chunk.shape[1]
            self.prefill_seqlens[0] = end - 1
            self.prefill_total[()] = end
            self.session.run_with_iobinding(io)
        self.lengths[slot] = input_ids.size
        return self.logits[0, 0].copy()

    def decode(self, slots: Sequence[int], token_ids: np.ndarray) -> np.ndarray:
        slots = np.asarray(slots, np.int64).reshape(-1)
        token_ids = np.asarray(token_ids, np.int64).reshape(-1)
        if slots.size == 0 or slots.size != token_ids.size or np.unique(slots).size != slots.size:
            raise ValueError(f"decode needs one token per distinct slot, got slots {slots.tolist()} and {token_ids.size} tokens")
        for slot in slots:
            self._check_slot(int(slot))
        if (self.lengths[slots] == 0).any():
            raise ValueError(f"slots {slots[self.lengths[slots] == 0].tolist()} have no prompt; prefill them first")
        full = slots[self.lengths[slots] >= self.max_length]
        if full.size:
            raise ContextOverflowError(f"slots {full.tolist()} hold {self.max_length} tokens, the whole context; "
                                       "no token can be added (end the answer there or start a new conversation)")
        if token_ids.min() < 0 or token_ids.max() >= self.vocab_size:
            raise ValueError(f"decode takes text token ids in [0, {self.vocab_size}), got {token_ids.tolist()}")
        # One run over the contiguous slot range; slots in between that are not stepping get token 0 at
        # their next free position, which their own next step overwrites (or which is never read).
        lo, hi = int(slots.min()), int(slots.max())
        batch = hi - lo + 1
        rows = slots - lo
        ids = np.zeros(batch, np.int64)
        ids[rows] = token_ids
        self.embed(ids, None, self.step_embeds[:batch, 0])
        np.minimum(self.lengths[lo : hi + 1], self.max_length - 1, out=self.step_seqlens[:batch], casting="unsafe")
        self.step_total[()] = self.step_seqlens[:batch].max() + 1
        self.session.run_with_iobinding(self._binding("decode", lo, batch))
        self.lengths[slots] += 1
        return self.logits[rows, 0]

    def release(self, slot: int) -> None:
        self._check_slot(slot)
        self.lengths[slot] = 0

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.max_batch:
            raise ValueError(f"slot {slot} is outside this engine's {self.max_batch} slots")
