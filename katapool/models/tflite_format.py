"""Serialising a TensorFlow Lite model: tensors, buffers, operators and signatures as a
flatbuffer, with the LiteRT schema's generated bindings (the ``tflite`` package) for field
layout and enum values. Knows nothing about KataGo."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 3
_ALIGN = 16  # LiteRT maps weights in place; 16-byte alignment keeps SIMD kernels happy

# numpy dtype -> the schema's TensorType
TENSOR_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int32): 2,
                np.dtype(np.int64): 4, np.dtype(np.int8): 9}


def _schema(name: str) -> Any:
    # The package's __init__ star-imports every module, so attribute access gives classes;
    # import_module gives the modules with the builder functions.
    return importlib.import_module(f"tflite.{name}")


def builtin(name: str) -> int:
    return int(getattr(_schema("BuiltinOperator").BuiltinOperator, name))


@dataclass
class Quantization:
    scale: list[float]
    zero_point: list[int]
    axis: int = 0


@dataclass
class TensorDef:
    name: str
    shape: tuple[int, ...]  # -1 for the dynamic batch
    dtype: np.dtype[Any]
    buffer: int = 0  # 0: no data (an activation)
    quant: Quantization | None = None


@dataclass
class OperatorDef:
    opcode: int  # index into the model's operator codes
    inputs: list[int]
    outputs: list[int]
    options_kind: str | None = None  # e.g. "Conv2DOptions"
    options: dict[str, Any] = field(default_factory=dict)  # field name -> value (scalars)


@dataclass
class ModelDef:
    tensors: list[TensorDef] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=lambda: [b""])  # buffer 0 is the empty one
    opcodes: list[tuple[int, int]] = field(default_factory=list)  # (builtin code, version)
    operators: list[OperatorDef] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    signature_inputs: dict[str, int] = field(default_factory=dict)
    signature_outputs: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, bytes] = field(default_factory=dict)
    description: str = ""

    def opcode(self, name: str, version: int = 1) -> int:
        code = (builtin(name), version)
        for i, (c, v) in enumerate(self.opcodes):
            if c == code[0]:
                if version > v:
                    self.opcodes[i] = code
                return i
        self.opcodes.append(code)
        return len(self.opcodes) - 1

    def buffer(self, data: bytes) -> int:
        self.buffers.append(data)
        return len(self.buffers) - 1


def _vector(b: Any, items: list[int], width: int = 4) -> int:
    b.StartVector(width, len(items), width)
    prepend = {4: b.PrependInt32, 8: b.PrependInt64}[width]
    for item in reversed(items):
        prepend(item)
    return int(b.EndVector())


def _offsets(b: Any, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _floats(b: Any, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(v)
    return int(b.EndVector())


def _bytes(b: Any, data: bytes) -> int:
    b.StartVector(1, len(data), _ALIGN)
    b.head = b.head - len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return int(b.EndVector())


def _table(b: Any, kind: str, fields: dict[str, Any]) -> int:
    mod = _schema(kind)
    getattr(mod, f"{kind}Start")(b)
    for name, value in fields.items():
        getattr(mod, f"{kind}Add{name}")(b, value)
    return int(getattr(mod, f"{kind}End")(b))


def _options_type(kind: str) -> int:
    return int(getattr(_schema("BuiltinOptions").BuiltinOptions, kind))


def serialize(model: ModelDef) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(sum(len(x) for x in model.buffers) + (1 << 20))
    buffers = [_table(b, "Buffer", {"Data": _bytes(b, data)} if data else {})
               for data in model.buffers]
    tensors = []
    for t in model.tensors:
        name = b.CreateString(t.name)
        static = [1 if d < 0 else d for d in t.shape]
        shape = _vector(b, static)
        signature = _vector(b, list(t.shape)) if static != list(t.shape) else None
        fields: dict[str, Any] = {"Shape": shape, "Type": TENSOR_TYPES[t.dtype],
                                  "Buffer": t.buffer, "Name": name}
        if signature is not None:
            fields["ShapeSignature"] = signature
        if t.quant is not None:
            q = t.quant
            fields["Quantization"] = _table(b, "QuantizationParameters", {
                "Scale": _floats(b, q.scale), "ZeroPoint": _vector(b, q.zero_point, 8),
                "QuantizedDimension": q.axis})
        tensors.append(_table(b, "Tensor", fields))
    operators = []
    for op in model.operators:
        inputs, outputs = _vector(b, op.inputs), _vector(b, op.outputs)
        fields = {"OpcodeIndex": op.opcode, "Inputs": inputs, "Outputs": outputs}
        if op.options_kind is not None:
            fields["BuiltinOptionsType"] = _options_type(op.options_kind)
            fields["BuiltinOptions"] = _table(b, op.options_kind, op.options)
        operators.append(_table(b, "Operator", fields))
    subgraph = _table(b, "SubGraph", {
        "Tensors": _offsets(b, tensors), "Inputs": _vector(b, model.inputs),
        "Outputs": _vector(b, model.outputs), "Operators": _offsets(b, operators),
        "Name": b.CreateString("main")})
    opcodes = [_table(b, "OperatorCode", {"DeprecatedBuiltinCode": min(code, 127),
                                          "BuiltinCode": code, "Version": version})
               for code, version in model.opcodes]

    def tensor_maps(mapping: dict[str, int]) -> int:
        return _offsets(b, [_table(b, "TensorMap", {"Name": b.CreateString(k), "TensorIndex": v})
                            for k, v in mapping.items()])

    signature = _table(b, "SignatureDef", {
        "Inputs": tensor_maps(model.signature_inputs),
        "Outputs": tensor_maps(model.signature_outputs),
        "SignatureKey": b.CreateString("serving_default"), "SubgraphIndex": 0})
    metadata = []
    for key, data in model.metadata.items():
        index = len(buffers)
        buffers.append(_table(b, "Buffer", {"Data": _bytes(b, data)}))
        metadata.append(_table(b, "Metadata", {"Name": b.CreateString(key), "Buffer": index}))
    root = _table(b, "Model", {
        "Version": SCHEMA_VERSION, "OperatorCodes": _offsets(b, opcodes),
        "Subgraphs": _offsets(b, [subgraph]), "Description": b.CreateString(model.description),
        "Buffers": _offsets(b, buffers), "Metadata": _offsets(b, metadata),
        "SignatureDefs": _offsets(b, [signature])})
    b.Finish(root, file_identifier=b"TFL3")
    return bytes(b.Output())


def read_metadata(data: bytes) -> dict[str, bytes]:
    """The named metadata buffers of a .tflite file."""
    model = _schema("Model").Model.GetRootAs(data, 0)
    found = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        buf = model.Buffers(entry.Buffer())
        found[entry.Name().decode()] = buf.DataAsNumpy().tobytes() if buf.DataLength() else b""
    return found

