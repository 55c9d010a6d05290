"""What an ONNX graph's tensors say about it, read from its protobuf bytes without the onnx package: the
external-data locations they name, and their element types.

The runtime imports without onnx (numpy and onnxruntime only), and a graph's `location` fields must be
checked before any backend opens files on the graph's behalf: a hostile graph can name `../../etc/passwd`,
an absolute path or a symlink, and older ONNX Runtime (and TensorRT's parser) would read it. This walks only
the messages that can hold a TensorProto (initializers, sparse initializers, Constant-style attributes,
subgraphs, functions, training graphs) and skips every other field by its length, so a 2 GB inline graph
costs no more than its structure.
"""

from __future__ import annotations

from collections.abc import Callable

# Field numbers from onnx.proto3 (stable across IR versions).
_MODEL = {7: "graph", 20: "training", 25: "function"}
_TRAINING = {1: "graph", 2: "graph"}
_FUNCTION = {7: "node"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_TENSOR_DATA_TYPE, _TENSOR_EXTERNAL_DATA = 2, 13
FLOAT16 = 10  # TensorProto.FLOAT16
# TensorProto's quantized element types: UINT8, INT8, the FLOAT8 kinds, UINT4, INT4, FLOAT4E2M1.
QUANTIZED = frozenset({2, 3, 17, 18, 19, 20, 21, 22, 23})
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_MAX_DEPTH = 64  # subgraphs nest (If/Loop bodies); deeper than this is not a graph anyone exported


class MalformedGraph(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


def external_locations(model: bytes) -> set[str]:
    """Every `location` named by an external-data tensor anywhere in the serialized ModelProto."""
    found: set[str] = set()
    _walk(memoryview(model), _MODEL, lambda tensor: _location(tensor, found), 0)
    return found


def tensor_data_types(model: bytes) -> set[int]:
    """The TensorProto data types of every tensor the ModelProto holds (initializers, constants, subgraphs')."""
    found: set[int] = set()
    _walk(memoryview(model), _MODEL, lambda tensor: _data_type(tensor, found), 0)
    return found


def _walk(buf: memoryview, fields: dict[int, str], visit: Callable[[memoryview], None], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise MalformedGraph("graphs nested too deeply")
    for number, value in _fields(buf):
        kind = fields.get(number)
        if kind is None or not isinstance(value, memoryview):
            continue
        if kind == "tensor":
            visit(value)
        else:
            _walk(value, _SCHEMA[kind], visit, depth + 1)


def _location(tensor: memoryview, found: set[str]) -> None:
    for number, value in _fields(tensor):
        if number == _TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            entry = dict(_fields(value))
            key, location = entry.get(_ENTRY_KEY), entry.get(_ENTRY_VALUE)
            if isinstance(key, memoryview) and bytes(key) == b"location":
                if not isinstance(location, memoryview):
                    raise MalformedGraph("an external-data location without a value")
                try:
                    found.add(bytes(location).decode("utf-8"))
                except UnicodeDecodeError:
                    raise MalformedGraph("an external-data location that is not UTF-8") from None


def _data_type(tensor: memoryview, found: set[int]) -> None:
    for number, value in _fields(tensor):
        if number == _TENSOR_DATA_TYPE and isinstance(value, int):
            found.add(value)


_SCHEMA = {
    "graph": _GRAPH,
    "training": _TRAINING,
    "function": _FUNCTION,
    "node": _NODE,
    "attribute": _ATTRIBUTE,
    "sparse": _SPARSE,
}


def _fields(buf: memoryview):
    """(field number, value) pairs: an int for varint/fixed fields, a memoryview for length-delimited ones."""
    pos, end = 0, len(buf)
    value: int | memoryview | None
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise MalformedGraph("a field runs past the end of its message")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = None, pos + 4
        else:  # groups (3, 4) are not used by ONNX; anything else is not protobuf
            raise MalformedGraph(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise MalformedGraph("a field runs past the end of its message")
        yield number, value


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise MalformedGraph("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
