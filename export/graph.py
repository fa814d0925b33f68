"""A small ONNX graph builder for graphs emitted from weights (the decoder), with every large initializer
streamed to one external-data file as it is added, so a 7B model never sits in memory twice.

ONNX Runtime 1.31 reads IR version <= 13 and `onnx.helper.make_model` writes 14: the version is set here.
onnx appends to an existing `.data` file, so the data file is always written fresh.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSET = 23
MS_DOMAIN = "com.microsoft"
INLINE_BYTES = 1024  # initializers smaller than this stay inside model.onnx
ALIGN = 4096  # external tensors start on page boundaries, so the file can be memory-mapped

ELEM_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
              np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32,
              np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.bool_): TensorProto.BOOL}


def elem_type(dtype) -> int:
    return ELEM_TYPES[np.dtype(dtype)]


class GraphBuilder:
    """Collects nodes, inputs, outputs and initializers; `save()` writes `path` and `path.data`."""

    def __init__(self, path: str | Path, name: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[TensorProto] = []
        self.used_names: set[str] = set()
        self.data_path = self.path.with_name(self.path.name + ".data")
        self.data_path.unlink(missing_ok=True)
        self.data_file = None
        self.data_size = 0

    def unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self.used_names:
            candidate, k = f"{name}_{k}", k + 1
        self.used_names.add(candidate)
        return candidate

    def add_input(self, name: str, dtype, shape: Sequence[int | str | None]) -> str:
        self.inputs.append(helper.make_tensor_value_info(self.unique(name), elem_type(dtype), list(shape)))
        return name

    def add_output(self, name: str, dtype, shape: Sequence[int | str | None]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type(dtype), list(shape)))

    def initializer(self, name: str, array: np.ndarray) -> str:
        """Add a constant tensor; large ones go straight to the external-data file."""
        name = self.unique(name)
        array = np.ascontiguousarray(array)
        if array.nbytes < INLINE_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        if self.data_file is None:
            self.data_file = open(self.data_path, "wb")
        offset = -self.data_size % ALIGN + self.data_size
        self.data_file.write(b"\0" * (offset - self.data_size))
        self.data_file.write(array.tobytes())
        self.data_size = offset + array.nbytes
        tensor = TensorProto(name=name, data_type=elem_type(array.dtype), dims=array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_path.name), ("offset", str(offset)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        self.initializers.append(tensor)
        return name

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, domain: str = "",
           name: str | None = None, **attrs) -> str | list[str]:
        """Add a node; returns its output name (or names, when more than one). '' marks an absent input/output."""
        node_name = self.unique(name or op_type)
        if isinstance(outputs, int):
            out_names = [self.unique(f"{node_name}/out{k}" if outputs > 1 else f"{node_name}/out") for k in range(outputs)]
        else:
            out_names = list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), out_names, name=node_name, domain=domain or None,
                                           **attrs))
        return out_names[0] if len(out_names) == 1 else out_names

    def save(self) -> list[Path]:
        """Write the model (and its data file, if any); returns the files written."""
        if self.data_file is not None:
            self.data_file.close()
            self.data_file = None
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="aerie")
        model.ir_version = IR_VERSION
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(model.SerializeToString())
        os.replace(tmp, self.path)
        return [self.path] + ([self.data_path] if self.data_path.exists() else [])
