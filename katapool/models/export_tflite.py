"""The network as a TensorFlow Lite (LiteRT) model, written op by op from katapool's op list.

Inputs and outputs keep KataGo's names, NCHW shapes and a dynamic batch (``shape_signature``
-1; resize the inputs before allocating), as in the ONNX export, and the file carries the same
metadata (``katapool`` metadata buffer, JSON). Inside, convolutions run in LiteRT's native NHWC
layout: each tensor is tracked with the layout it is stored in, and layouts change only where a
tensor meets one stored the other way (a reshape when the two layouts hold the same bytes, a
transpose otherwise), so a residual trunk runs without per-layer transposes.

Precisions: ``fp32``; ``fp16`` (convolution and matrix weights stored as FP16 and expanded at
load time, as LiteRT's own FP16 files do; CPU arithmetic stays FP32, GPU delegates compute in
FP16); ``int8`` (see ``tflite_int8``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from katapool.errors import ModelError
from katapool.models.oplist import OpList, averaged_sums
from katapool.models.tflite_format import ModelDef, OperatorDef, Quantization, TensorDef, serialize

PLAIN, NHWC, SEQ_T = "plain", "nhwc", "seq_t"  # SEQ_T: logical [N, C, S] stored as [N, S, C]
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
_AXIS_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}  # an NCHW axis -> where it is in NHWC
_UNARY = {"Relu": "RELU", "Sigmoid": "LOGISTIC", "Tanh": "TANH", "Sqrt": "SQRT"}
_BINARY = {"Add": ("ADD", "AddOptions"), "Sub": ("SUB", "SubOptions"),
           "Mul": ("MUL", "MulOptions"), "Div": ("DIV", "DivOptions")}
_REDUCE = {"ReduceSum": "SUM", "ReduceMax": "REDUCE_MAX", "ReduceMean": "MEAN"}
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class _Slot:
    index: int  # the TFLite tensor
    layout: str
    shape: tuple[int, ...]  # logical (ONNX) shape


def _stored(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == NHWC:
        return tuple(shape[i] for i in TO_NHWC)
    if layout == SEQ_T:
        return (shape[0], shape[2], shape[1])
    return shape


def _same_bytes(shape: tuple[int, ...]) -> bool:
    """NCHW and NHWC hold the same bytes when there is one channel or one point."""
    return len(shape) == 4 and (shape[1] == 1 or shape[2] * shape[3] == 1)


class WeightPolicy:
    """How a convolution's or matrix's weights are stored and fed to its op; FP32 by default.
    Returns the tensor index the op reads (and may add ops before it)."""

    def weights(self, writer: TFLiteWriter, array: np.ndarray, name: str) -> int:
        return writer.const(array, name)

    def wrap(self, writer: TFLiteWriter, op: str, x: int, w: int, bias: int, out: int,
             options_kind: str, options: dict[str, Any], scope: str) -> None:
        writer.emit(op, [x, w, bias], [out], options_kind, options)

    def constant(self, writer: TFLiteWriter, array: np.ndarray, name: str) -> int:
        """Any other constant an op reads (norm scales, RoPE tables, ...)."""
        return writer.const(array, name)


FP16_MAX = 65504.0
LARGE_CONSTANT = 4096  # elements: an FP16 file stores constants this big in FP16


class FP16Weights(WeightPolicy):
    def __init__(self) -> None:
        self._expanded: dict[str, int] = {}

    def weights(self, writer: TFLiteWriter, array: np.ndarray, name: str) -> int:
        largest = float(np.abs(array).max(initial=0.0))
        if largest > FP16_MAX:
            raise ModelError(f"{name.removesuffix('_w')}: a weight of {largest:.4g} is beyond "
                             f"FP16's range (±{FP16_MAX:g}); this network cannot be stored in "
                             "FP16: export it in FP32")
        half = writer.const(array.astype(np.float16), name + "_fp16")
        full = writer.tensor(name, array.shape, np.float32)
        writer.emit("DEQUANTIZE", [half], [full], version=3)
        return full

    def constant(self, writer: TFLiteWriter, array: np.ndarray, name: str) -> int:
        # Large tables (the transformers' RoPE cos/sin, values in [-1, 1]) are most of some
        # files; small ones (norm scales, scalars) stay FP32 as they cost nothing.
        if array.dtype != np.float32 or array.size < LARGE_CONSTANT:
            return writer.const(array, name)
        if name not in self._expanded:
            self._expanded[name] = self.weights(writer, array, name)
        return self._expanded[name]


class TFLiteWriter:
    def __init__(self, ops: OpList, policy: WeightPolicy | None = None) -> None:
        self.ops = ops
        self.model = ModelDef()
        self.slots: dict[str, _Slot] = {}
        self.policy = policy or WeightPolicy()
        self._converted: dict[tuple[str, str], int] = {}
        self._consts: dict[tuple[str, str], int] = {}

    # --- tensors and ops ------------------------------------------------------------------------

    def tensor(self, name: str, shape: tuple[int, ...], dtype: Any = np.float32,
               buffer: int = 0, quant: Quantization | None = None) -> int:
        self.model.tensors.append(TensorDef(name, tuple(int(d) for d in shape), np.dtype(dtype),
                                            buffer, quant))
        return len(self.model.tensors) - 1

    def const(self, array: np.ndarray, name: str, quant: Quantization | None = None) -> int:
        array = np.ascontiguousarray(array)
        key = (name, array.dtype.str + str(array.shape))
        if key not in self._consts or quant is not None:
            buf = self.model.buffer(array.tobytes())
            self._consts[key] = self.tensor(name, array.shape, array.dtype, buf, quant)
        return self._consts[key]

    def ints(self, values: list[int] | tuple[int, ...], name: str = "shape") -> int:
        array = np.array(values, dtype=np.int32)
        return self.const(array, f"{name}_{'_'.join(map(str, values))}".replace("-", "m"))

    def emit(self, op: str, inputs: list[int], outputs: list[int], options_kind: str | None = None,
             options: dict[str, Any] | None = None, version: int = 1) -> None:
        self.model.operators.append(OperatorDef(self.model.opcode(op, version), inputs, outputs,
                                                options_kind, options or {}))

    def new(self, name: str, shape: tuple[int, ...], layout: str) -> _Slot:
        slot = _Slot(self.tensor(name, _stored(shape, layout)), layout, shape)
        self.slots[name] = slot
        return slot

    def reshape(self, x: int, stored: tuple[int, ...], name: str) -> int:
        out = self.tensor(name, stored)
        self.emit("RESHAPE", [x, self.ints(stored)], [out])
        return out

    def transpose(self, x: int, perm: tuple[int, ...], stored: tuple[int, ...], name: str) -> int:
        out = self.tensor(name, stored)
        self.emit("TRANSPOSE", [x, self.ints(perm, "perm")], [out])
        return out

    # --- layouts --------------------------------------------------------------------------------

    def value(self, name: str, layout: str) -> int:
        """Tensor ``name`` stored in ``layout`` (constants converted once, activations by a
        reshape or transpose, cached)."""
        const = self.ops.const(name)
        if const is not None:
            array = const.astype(np.float32) if const.dtype == np.float64 else const
            if layout == NHWC and array.ndim == 4:
                array = array.transpose(TO_NHWC)
            return self.policy.constant(self, array, name + ("_nhwc" if layout == NHWC else ""))
        slot = self.slots[name]
        if slot.layout == layout:
            return slot.index
        key = (name, layout)
        if key not in self._converted:
            target = _stored(slot.shape, layout)
            if slot.layout == PLAIN and layout == NHWC:
                self._converted[key] = self.reshape(slot.index, target, f"{name}_nhwc") \
                    if _same_bytes(slot.shape) else \
                    self.transpose(slot.index, TO_NHWC, target, f"{name}_nhwc")
            elif slot.layout == NHWC and layout == PLAIN:
                self._converted[key] = self.reshape(slot.index, target, f"{name}_nchw") \
                    if _same_bytes(slot.shape) else \
                    self.transpose(slot.index, TO_NCHW, target, f"{name}_nchw")
            elif slot.layout == SEQ_T and layout == PLAIN:
                self._converted[key] = self.transpose(slot.index, (0, 2, 1), target, f"{name}_cs")
            else:
                plain = self.value(name, PLAIN)
                self._converted[(name, PLAIN)] = plain
                self.slots[f"{name}#plain"] = _Slot(plain, PLAIN, slot.shape)
                self._converted[key] = self.value(f"{name}#plain", layout)
        return self._converted[key]

    def layout_of(self, name: str) -> str:
        return PLAIN if self.ops.const(name) is not None else self.slots[name].layout

    # --- translation ----------------------------------------------------------------------------

    def build(self) -> ModelDef:
        m = self.model
        for t in self.ops.inputs:
            index = self.tensor(t.name, t.shape)
            m.inputs.append(index)
            m.signature_inputs[t.name] = index
            self.slots[t.name] = _Slot(index, PLAIN, t.shape)
            if len(t.shape) == 4:  # spatial inputs go NHWC once, at the door
                self.value(t.name, NHWC)
                self.slots[t.name] = _Slot(self._converted[(t.name, NHWC)], NHWC, t.shape)
                self._converted[(t.name, PLAIN)] = index
        for op in self.ops.ops:
            translate = getattr(self, f"op_{op.kind}", None)
            if translate is None:
                raise ModelError(f"{op.scope or 'graph'}/{op.output}: operator {op.kind} has no "
                                 "TFLite translation")
            try:
                translate(op)
            except ModelError:
                raise
            except (KeyError, ValueError, IndexError) as exc:
                raise ModelError(f"{op.scope or 'graph'}: cannot express {op.kind} in TFLite "
                                 f"({exc})") from None
        for t in self.ops.outputs:
            index = self.output(t.name)
            m.outputs.append(index)
            m.signature_outputs[t.name] = index
        return m

    def output(self, name: str) -> int:
        slot = self.slots[name]
        if slot.layout != PLAIN or slot.index in self.model.outputs or slot.index in self.model.inputs:
            index = self.value(name, PLAIN)
            if index in self.model.outputs or index in self.model.inputs:
                index = self.reshape(index, slot.shape, name)
        else:
            index = slot.index
        self.model.tensors[index].name = name
        return index

    def op_Identity(self, op: Any) -> None:
        self.slots[op.output] = self.slots[op.inputs[0]]

    def op_Conv(self, op: Any) -> None:
        w = self.ops.const(op.inputs[1])
        if w is None:
            raise ModelError(f"{op.scope}: convolution weights must be constant")
        out_c, in_c, ky, kx = w.shape
        dy, dx = op.attrs.get("dilations", [1, 1])
        pads = list(op.attrs.get("pads", [0, 0, 0, 0]))
        x = self.value(op.inputs[0], NHWC)
        if pads != [dy * (ky - 1) // 2, dx * (kx - 1) // 2] * 2 or ky % 2 == 0 or kx % 2 == 0:
            raise ModelError(f"{op.scope}: only 'same' convolutions with odd kernels are "
                             "expressible here")
        weights = self.policy.weights(self, w.transpose(0, 2, 3, 1), op.output + "_w")  # OHWI
        bias = self.const(np.zeros(out_c, dtype=np.float32), f"zeros_{out_c}")
        out = self.new(op.output, self.ops.shape(op.output), NHWC)
        self.policy.wrap(self, "CONV_2D", x, weights, bias, out.index, "Conv2DOptions",
                         {"Padding": 0, "StrideW": 1, "StrideH": 1, "DilationWFactor": dx,
                          "DilationHFactor": dy}, op.scope)

    def op_MatMul(self, op: Any) -> None:
        a, b = op.inputs
        w = self.ops.const(b)
        shape = self.ops.shape(op.output)
        if w is None:  # activation x activation (attention scores and mixing)
            out = self.new(op.output, shape, PLAIN)
            self.emit("BATCH_MATMUL", [self.value(a, PLAIN), self.value(b, PLAIN)], [out.index],
                      "BatchMatMulOptions", {"AdjX": False, "AdjY": False})
            return
        if w.ndim != 2:
            raise ModelError(f"{op.scope}: a constant matrix must be 2-D")
        weights = self.policy.weights(self, np.ascontiguousarray(w.T), op.output + "_w")
        out = self.new(op.output, shape, PLAIN)
        self.policy.wrap(self, "FULLY_CONNECTED", self.value(a, PLAIN), weights, -1, out.index,
                         "FullyConnectedOptions", {"KeepNumDims": len(shape) > 2}, op.scope)

    def _binary(self, op: Any) -> None:
        a, b = op.inputs
        layouts = {self.layout_of(a), self.layout_of(b)}
        shape = self.ops.shape(op.output)
        layout = NHWC if NHWC in layouts and len(shape) == 4 else PLAIN
        if layout == NHWC:  # a tensor stored the other way follows (cheaply when it can)
            for name in (a, b):
                s = self.ops.shape(name)
                if len(s) not in (0, 1, 4) or (len(s) == 1 and s[0] != 1):
                    layout = PLAIN  # per-axis broadcasting would land on the wrong axis
        kind, options = _BINARY[op.kind]
        out = self.new(op.output, shape, layout)
        self.emit(kind, [self.value(a, layout), self.value(b, layout)], [out.index], options, {})

    op_Add = op_Sub = op_Mul = op_Div = _binary

    def _unary(self, op: Any) -> None:
        layout = self.layout_of(op.inputs[0])
        out = self.new(op.output, self.ops.shape(op.output), layout)
        self.emit(_UNARY[op.kind], [self.value(op.inputs[0], layout)], [out.index])

    op_Relu = op_Sigmoid = op_Tanh = op_Sqrt = _unary

    def op_Softplus(self, op: Any) -> None:
        """relu(x) + log(1 + exp(-|x|)): LiteRT has no softplus; this form never overflows."""
        layout = self.layout_of(op.inputs[0])
        shape = self.ops.shape(op.output)
        x = self.value(op.inputs[0], layout)
        stored = _stored(shape, layout)

        def step(kind: str, *inputs: int, options: str | None = None) -> int:
            t = self.tensor(f"{op.output}_{kind.lower()}", stored)
            self.emit(kind, list(inputs), [t], options, {})
            return t

        neg = step("NEG", step("ABS", x))
        log1p = step("LOG", step("ADD", step("EXP", neg), self.const(np.ones((), np.float32), "one"),
                                 options="AddOptions"))
        out = self.new(op.output, shape, layout)
        self.emit("ADD", [step("RELU", x), log1p], [out.index], "AddOptions", {})

    def _axes(self, op: Any, layout: str) -> list[int]:
        axes = self.ops.ints(op.inputs[1]) if len(op.inputs) > 1 else list(op.attrs["axes"])
        rank = len(self.ops.shape(op.inputs[0]))
        axes = [a % rank for a in axes]
        return sorted(_AXIS_NHWC[a] for a in axes) if layout == NHWC else axes

    def _reduce(self, op: Any) -> None:
        keep = bool(op.attrs.get("keepdims", 1))
        layout = self.layout_of(op.inputs[0])
        if layout != NHWC or not keep:
            layout = PLAIN
        axes = self._axes(op, layout)
        out = self.new(op.output, self.ops.shape(op.output), layout)
        self.emit(_REDUCE[op.kind], [self.value(op.inputs[0], layout), self.ints(axes, "axes")],
                  [out.index], "ReducerOptions", {"KeepDims": keep})

    op_ReduceSum = op_ReduceMax = op_ReduceMean = _reduce

    def op_Concat(self, op: Any) -> None:
        shape = self.ops.shape(op.output)
        axis = int(op.attrs["axis"]) % len(shape)
        layout = NHWC if len(shape) == 4 and any(self.layout_of(i) == NHWC for i in op.inputs) \
            else PLAIN
        out = self.new(op.output, shape, layout)
        self.emit("CONCATENATION", [self.value(i, layout) for i in op.inputs], [out.index],
                  "ConcatenationOptions", {"Axis": _AXIS_NHWC[axis] if layout == NHWC else axis})

    def op_Flatten(self, op: Any) -> None:
        self._to_shape(op.inputs[0], op.output)

    def op_Unsqueeze(self, op: Any) -> None:
        self._to_shape(op.inputs[0], op.output)

    def op_Reshape(self, op: Any) -> None:
        self._to_shape(op.inputs[0], op.output)

    def _to_shape(self, name: str, output: str) -> None:
        """A reshape in logical (NCHW) terms, done on whatever layout ``name`` is stored in."""
        src = self.ops.shape(name)
        shape = self.ops.shape(output)
        layout = self.layout_of(name)
        if layout == NHWC and len(shape) == 3 and shape[1] == src[1] and not _same_bytes(src):
            out = self.new(output, shape, SEQ_T)  # [N,C,H,W] -> [N,C,S]: stored [N,S,C]
            self.emit("RESHAPE", [self.value(name, NHWC), self.ints(_stored(shape, SEQ_T))],
                      [out.index])
            return
        if layout == SEQ_T and len(shape) == 4 and shape[1] == src[1]:
            out = self.new(output, shape, NHWC)  # [N,C,S] -> [N,C,H,W]: stored [N,H,W,C]
            self.emit("RESHAPE", [self.value(name, SEQ_T), self.ints(_stored(shape, NHWC))],
                      [out.index])
            return
        # With the same bytes as NCHW, reshape from the stored form.
        x = self.slots[name].index if layout == NHWC and _same_bytes(src) else self.value(name, PLAIN)
        out = self.new(output, shape, PLAIN)
        self.emit("RESHAPE", [x, self.ints(shape)], [out.index])

    def op_Transpose(self, op: Any) -> None:
        name = op.inputs[0]
        perm = tuple(int(p) for p in op.attrs["perm"])
        shape = self.ops.shape(op.output)
        layout = self.layout_of(name)
        if self.ops.const(name) is None and len(perm) == 3 and perm == (0, 2, 1):
            if layout == PLAIN:  # [N,S,C] -> [N,C,S]: keep the bytes, remember the order
                self.slots[op.output] = _Slot(self.slots[name].index, SEQ_T, shape)
                return
            if layout == SEQ_T:
                self.slots[op.output] = _Slot(self.slots[name].index, PLAIN, shape)
                return
        if layout == NHWC:
            stored_perm = tuple(TO_NCHW[p] for p in perm)
            x = self.slots[name].index
        else:
            stored_perm, x = perm, self.value(name, PLAIN)
        out = self.new(op.output, shape, PLAIN)
        if stored_perm == tuple(range(len(perm))):
            self.emit("RESHAPE", [x, self.ints(shape)], [out.index])
        else:
            self.emit("TRANSPOSE", [x, self.ints(stored_perm, "perm")], [out.index])

    def op_Slice(self, op: Any) -> None:
        name = op.inputs[0]
        src = self.ops.shape(name)
        starts, ends = self.ops.ints(op.inputs[1]), self.ops.ints(op.inputs[2])
        axes = self.ops.ints(op.inputs[3]) if len(op.inputs) > 3 else list(range(len(starts)))
        if len(op.inputs) > 4 and any(s != 1 for s in self.ops.ints(op.inputs[4])):
            raise ModelError(f"{op.scope}: strided slices are not expressible here")
        begin, size = [0] * len(src), [-1] * len(src)
        for start, end, axis in zip(starts, ends, axes, strict=True):
            axis %= len(src)
            dim = src[axis]
            start = max(0, min(start if start >= 0 else start + dim, dim))
            end = max(start, min(end if end >= 0 else end + dim, dim))
            begin[axis], size[axis] = start, end - start
        layout = self.layout_of(name)
        if layout == NHWC:
            begin, size = [begin[i] for i in TO_NHWC], [size[i] for i in TO_NHWC]
        elif layout == SEQ_T:
            layout = PLAIN
        out = self.new(op.output, self.ops.shape(op.output), layout)
        self.emit("SLICE", [self.value(name, layout), self.ints(begin, "begin"),
                            self.ints(size, "size")], [out.index])

    def op_Gather(self, op: Any) -> None:
        data, indices = op.inputs
        idx = self.ops.const(indices)
        if idx is None:
            raise ModelError(f"{op.scope}: gather indices must be constant")
        axis = int(op.attrs.get("axis", 0)) % len(self.ops.shape(data))
        out = self.new(op.output, self.ops.shape(op.output), PLAIN)
        self.emit("GATHER", [self.value(data, PLAIN),
                             self.const(idx.astype(np.int32), indices + "_i32")],
                  [out.index], "GatherOptions", {"Axis": axis})

    def op_Softmax(self, op: Any) -> None:
        shape = self.ops.shape(op.output)
        axis = int(op.attrs.get("axis", -1)) % len(shape)
        if axis != len(shape) - 1:
            raise ModelError(f"{op.scope}: LiteRT's softmax works on the last axis only")
        out = self.new(op.output, shape, PLAIN)
        self.emit("SOFTMAX", [self.value(op.inputs[0], PLAIN)], [out.index], "SoftmaxOptions",
                  {"Beta": 1.0})


def require_writer() -> None:
    """The flatbuffer bindings, or the extra to install."""
    try:
        import flatbuffers  # noqa: F401
        import tflite  # noqa: F401
    except ImportError:
        raise ModelError("TFLite export needs the LiteRT schema bindings: "
                         "pip install 'katapool[tflite]'") from None


def write_tflite(ops: OpList, precision: str = "fp32", policy: WeightPolicy | None = None) -> bytes:
    """The op list as .tflite bytes; ``policy`` overrides how weights are stored (INT8)."""
    require_writer()
    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if policy is None:
        if precision == "int8":
            raise ModelError("INT8 needs calibrated activation ranges: use tflite_int8")
        policy = FP16Weights() if precision == "fp16" else WeightPolicy()
    writer = TFLiteWriter(averaged_sums(ops), policy)  # FP16 GPU delegates: no large sums
    model = writer.build()
    model.description = f"katapool: {ops.name} ({precision})"
    meta = dict(ops.metadata)
    meta["precision"] = precision
    model.metadata["katapool"] = json.dumps(meta, sort_keys=True).encode()
    return serialize(model)

