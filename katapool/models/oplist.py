"""The network as a flat list of operations with every tensor's shape: the form the TFLite and
Core ML writers start from.

katapool's ONNX builder (``export_onnx``) lowers the model description once, into a small,
fixed vocabulary of ONNX operators (``VOCABULARY``); this module reads that graph back as typed
records, with shapes from ONNX's own inference and constants as numpy arrays. Each writer then
translates op by op. Both writers therefore compute exactly what the ONNX export computes, and
tests hold them to its numbers block by block. This is not a general ONNX importer: an operator
outside the vocabulary is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from katapool.errors import ModelError

# Every operator the ONNX builder emits, and nothing else.
VOCABULARY = frozenset({
    "Add", "Concat", "Conv", "Div", "Flatten", "Gather", "Identity", "MatMul", "Mul",
    "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Sigmoid", "Slice", "Softmax",
    "Softplus", "Sqrt", "Sub", "Tanh", "Transpose", "Unsqueeze",
})

BATCH = -1  # the dynamic batch dimension in shapes


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # BATCH where the batch size goes
    value: np.ndarray | None = None  # constants only


@dataclass(frozen=True)
class Op:
    kind: str  # the ONNX operator name
    inputs: tuple[str, ...]
    output: str
    attrs: dict[str, Any]
    scope: str  # the network part, e.g. "block3/attn/scores" (see _Graph.scope)


@dataclass
class OpList:
    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    ops: list[Op]
    tensors: dict[str, Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def const(self, name: str) -> np.ndarray | None:
        return self.tensors[name].value

    def ints(self, name: str) -> list[int]:
        """A constant integer input (axes, shapes, indices) as a list."""
        value = self.const(name)
        if value is None:
            raise ModelError(f"{name}: expected a constant")
        return [int(v) for v in value.reshape(-1)]

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for op in self.ops:
            found[op.kind] = found.get(op.kind, 0) + 1
        return dict(sorted(found.items()))


def _dims(type_proto: Any, name: str) -> tuple[int, ...]:
    dims = []
    for i, d in enumerate(type_proto.tensor_type.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(BATCH)
        else:
            raise ModelError(f"{name}: dimension {i} is not known ahead of time")
    return tuple(dims)


def from_onnx(proto: Any) -> OpList:
    """The op list of a graph made by katapool's ONNX builder (a whole network or one block)."""
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    graph = inferred.graph
    tensors: dict[str, Tensor] = {}
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        tensors[init.name] = Tensor(init.name, tuple(value.shape), value)
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.name not in tensors:
            tensors[info.name] = Tensor(info.name, _dims(info.type, info.name))
    ops = []
    for node in graph.node:
        if node.op_type not in VOCABULARY:
            raise ModelError(f"{node.name or node.op_type}: operator {node.op_type} is outside "
                             "what katapool's TFLite and Core ML writers translate")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.output[0] not in tensors:
            raise ModelError(f"{node.name}: the shape of {node.output[0]} could not be inferred")
        scope = node.name.rsplit("/", 1)[0] if "/" in node.name else ""
        ops.append(Op(node.op_type, tuple(node.input), node.output[0], attrs, scope))
    metadata = {p.key: p.value for p in proto.metadata_props}
    return OpList(graph.name, [tensors[i.name] for i in graph.input],
                  [tensors[o.name] for o in graph.output], ops, tensors, metadata)


def averaged_sums(ops: OpList) -> OpList:
    """The op list with every sum that is only divided rewritten as a mean divided by
    (divisor / count): the same number, with no large intermediate. FP16 hardware (the Neural
    Engine, GPU delegates) overflows on the plain form: the spatial RMSNorm tip sums x² over
    channels and board (3.6e5 in KaTrain's b10c384) and divides by area × channels (1.4e5),
    both past FP16's 65504. Global pooling's sums get the same treatment."""
    readers: dict[str, int] = {}
    for op in ops.ops:
        for name in op.inputs:
            readers[name] = readers.get(name, 0) + 1
    for tensor in ops.outputs:
        readers[tensor.name] = readers.get(tensor.name, 0) + 1
    made_by = {op.output: op for op in ops.ops}
    tensors = dict(ops.tensors)
    replace: dict[str, list[Op]] = {}  # op output -> the ops written in its place
    for op in ops.ops:
        total = made_by.get(op.inputs[0]) if op.kind == "Div" else None
        if total is None or total.kind != "ReduceSum" or readers[total.output] != 1:
            continue
        shape = ops.shape(total.inputs[0])
        axes = ops.ints(total.inputs[1]) if len(total.inputs) > 1 else []
        dims = [shape[a] for a in axes]
        if not dims or BATCH in dims:
            continue
        count = float(np.prod(dims))
        replace[total.output] = [Op("ReduceMean", (total.inputs[0],), total.output,
                                    {"axes": axes, "keepdims": total.attrs.get("keepdims", 1)},
                                    total.scope)]
        divisor = made_by.get(op.inputs[1])
        side = _scalar_side(ops, divisor) if divisor is not None and divisor.kind == "Mul" \
            and readers[divisor.output] == 1 else None
        if divisor is not None and side is not None:  # a·c becomes a·(c / count)
            c = ops.const(divisor.inputs[side])
            assert c is not None
            name = f"{divisor.inputs[side]}_per_{int(count)}"
            tensors[name] = Tensor(name, c.shape, (c / count).astype(np.float32))
            inputs = list(divisor.inputs)
            inputs[side] = name
            replace[divisor.output] = [Op("Mul", tuple(inputs), divisor.output, {}, divisor.scope)]
        else:
            name = f"per_{int(count)}"
            tensors[name] = Tensor(name, (), np.array(1.0 / count, dtype=np.float32))
            per = f"{op.inputs[1]}_per_{int(count)}_{op.output}"
            tensors[per] = Tensor(per, ops.shape(op.inputs[1]))
            replace[op.output] = [Op("Mul", (op.inputs[1], name), per, {}, op.scope),
                                  Op("Div", (op.inputs[0], per), op.output, {}, op.scope)]
    if not replace:
        return ops
    rewritten = [new for op in ops.ops for new in replace.get(op.output, [op])]
    return OpList(ops.name, ops.inputs, ops.outputs, rewritten, tensors, ops.metadata)


def _scalar_side(ops: OpList, mul: Op) -> int | None:
    """Which input of a Mul is a constant scalar, if one is."""
    for i, name in enumerate(mul.inputs):
        value = ops.const(name)
        if value is not None and value.size == 1:
            return i
    return None
