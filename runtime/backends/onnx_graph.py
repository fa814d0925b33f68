"""What a decoder graph was exported for, read from its model.onnx without the onnx package.

ONNX Runtime does not expose a graph's initializers, and the KV inputs' length is symbolic, but the context a
decoder graph supports is fixed inside it: the rotary cos/sin tables GroupQueryAttention reads (its inputs 7
and 8) have one row per position. `rotary_positions` walks the protobuf for them (the model file holds no
weights of 1 KiB or more: they live in the external data file, docs/engine-format.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

# Field numbers of onnx.proto: ModelProto.graph; GraphProto.node, .initializer; NodeProto.input, .op_type;
# TensorProto.dims, .name.
MODEL_GRAPH, GRAPH_NODE, GRAPH_INITIALIZER = 7, 1, 5
NODE_INPUT, NODE_OP_TYPE = 1, 4
TENSOR_DIMS, TENSOR_NAME = 1, 8
COS_CACHE_INPUT = 7


def varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of a protobuf message: an int for varints, a view for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
            yield number, value
        elif wire == 2:
            length, pos = varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("a field runs past the end of its message")
            yield number, buf[pos:pos + length]
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire} is not used by ONNX")


def dims(tensor: memoryview) -> list[int]:
    out: list[int] = []
    for number, value in fields(tensor):
        if number == TENSOR_DIMS:
            if isinstance(value, int):
                out.append(value)
            else:  # packed
                pos = 0
                while pos < len(value):
                    d, pos = varint(value, pos)
                    out.append(d)
    return out


def rotary_positions(model: str | Path) -> int | None:
    """Positions of the cos table of the graph's first GroupQueryAttention; None when there is none (or the
    file is not an ONNX model this reader understands)."""
    view = memoryview(Path(model).read_bytes())
    try:
        graph = next(v for n, v in fields(view) if n == MODEL_GRAPH)
        cos_name, tables = None, {}
        for number, value in fields(graph):
            if number == GRAPH_NODE and cos_name is None:
                node = list(fields(value))
                if any(n == NODE_OP_TYPE and bytes(v) == b"GroupQueryAttention" for n, v in node):
                    inputs = [bytes(v) for n, v in node if n == NODE_INPUT]
                    cos_name = inputs[COS_CACHE_INPUT] if len(inputs) > COS_CACHE_INPUT else b""
            elif number == GRAPH_INITIALIZER:
                name = next((bytes(v) for n, v in fields(value) if n == TENSOR_NAME), b"")
                tables[name] = value
        shape = dims(tables[cos_name]) if cos_name in tables else []
        return shape[0] if shape else None
    except (StopIteration, ValueError, IndexError, TypeError):
        return None


def check_decoder_graph(session, spec: dict, model: Path) -> None:
    """ManifestError unless the session's graph is the one the manifest's decoder part describes: its inputs and
    outputs by the `io` names, their fixed sizes, and a context no longer than its rotary tables."""
    from ..errors import ManifestError
    from ..manifest import REBUILD

    def refuse(what: str) -> ManifestError:
        return ManifestError(f"{model}: {what}, the manifest's decoder part says otherwise: the manifest was "
                             f"edited or belongs to another engine; {REBUILD}")

    positions = rotary_positions(model)
    if positions is not None and spec["max_length"] > positions:
        raise refuse(f"the graph holds {positions} positions, not max_length {spec['max_length']}")
    shapes = {t.name: t.shape for t in [*session.get_inputs(), *session.get_outputs()]}
    if spec["num_layers"] > len(shapes) // 4:  # each layer has a past and a present key and value
        raise refuse(f"the graph has {len(shapes)} inputs and outputs, too few for {spec['num_layers']} layers")
    io, layers = spec["io"], range(spec["num_layers"])
    kv = [None, spec["num_kv_heads"], None, spec["head_dim"]]
    expected = {io["inputs_embeds"]: [None, None, spec["hidden_size"]], io["seqlens_k"]: [None],
                io["total_sequence_length"]: [], io["logits"]: [None, None, spec["vocab_size"]]}
    if "visual_token_mask" in io:  # EVEv2: True at image positions
        expected[io["visual_token_mask"]] = [None, None]
    for kind in ("past_key", "past_value", "present_key", "present_value"):
        expected.update({io[kind].format(layer=i): kv for i in layers})
    unnamed = [t.name for t in session.get_inputs() if t.name not in expected]
    if unnamed:
        raise refuse(f"the graph has an input {unnamed[0]!r} the manifest does not name")
    for name, shape in expected.items():
        if name not in shapes:
            raise refuse(f"the graph has no input or output {name!r}")
        fixed = [(want, got) for want, got in zip(shape, shapes[name]) if want is not None and isinstance(got, int)]
        if len(shapes[name]) != len(shape) or any(want != got for want, got in fixed):
            raise refuse(f"{name!r} has shape {shapes[name]}")
