"""The quantization modes `build.py --quant` and `python -m quant` offer and what each means for every backend.

| mode     | decoder weights          | decoder activations | TensorRT-LLM quant_algo | runs on this CPU              |
|----------|--------------------------|---------------------|-------------------------|-------------------------------|
| fp8      | FP8 E4M3, one scale      | FP8 E4M3, one scale | FP8                     | fake-quant in PyTorch          |
| int4_awq | INT4, groups of 128, AWQ | fp16 (W4A16)        | W4A16_AWQ               | ONNX Runtime MatMulNBits       |
| w4a8_awq | INT4, groups of 128, AWQ | FP8 E4M3            | W4A8_AWQ                | fake-quant; ORT runs its INT4 weights with float activations |
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import QuantizationError

BLOCK_SIZES = (64, 128)  # the group sizes TensorRT-LLM's AWQ kernels take
# build.py --lm-head on ONNX Runtime: the INT4 graph's lm_head -> (bits, block size); docs/quantization.md has each
# choice's accuracy and speed
LM_HEADS = {"float": None, "int8": (8, 128), "int4": (4, 128)}
DEFAULT_LM_HEAD = "int4"


@dataclass(frozen=True)
class QuantMode:
    name: str
    quant_algo: str  # TensorRT-LLM's QuantAlgo value in the checkpoint's config.json
    int4: bool  # INT4 block-quantized weights: widths must be multiples of the block size
    fp8_activations: bool

    @property
    def ort_int4(self) -> bool:
        """Whether the ONNX Runtime engine executes this mode (its INT4 weights; activations stay float)."""
        return self.int4 and not self.fp8_activations


MODES: dict[str, QuantMode] = {
    m.name: m
    for m in (
        QuantMode("fp8", "FP8", int4=False, fp8_activations=True),
        QuantMode("int4_awq", "W4A16_AWQ", int4=True, fp8_activations=False),
        QuantMode("w4a8_awq", "W4A8_AWQ", int4=True, fp8_activations=True),
    )
}


def get_mode(name: str) -> QuantMode:
    try:
        return MODES[name]
    except KeyError:
        raise QuantizationError(f"unknown quantization mode {name!r}; choose one of {', '.join(MODES)}") from None


def check_group_size(group_size: int) -> None:
    if group_size not in BLOCK_SIZES:
        raise QuantizationError(f"INT4 group size {group_size}: TensorRT-LLM's AWQ kernels take {BLOCK_SIZES}")
