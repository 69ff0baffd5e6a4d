"""INT8 TFLite: the trunk blocks' convolutions and matrix products in INT8, the rest in FP32.

The same split as the ONNX INT8 export (docs/quantization.md): stem, trunk tip, heads, norms,
pooling and attention's activation-by-activation products stay FP32. Each INT8 layer is
QUANTIZE -> CONV_2D / FULLY_CONNECTED (INT8 weights, one symmetric scale per output channel;
INT32 bias) -> DEQUANTIZE, with activation ranges calibrated by running the FP32 ONNX export on
the engine's own input tensors (percentiles over a subsample of every activation)."""

from __future__ import annotations

from typing import Any

import numpy as np

from katapool.errors import ModelError
from katapool.models.export_tflite import TFLiteWriter, WeightPolicy
from katapool.models.oplist import OpList, averaged_sums
from katapool.models.tflite_format import Quantization, serialize

PERCENTILE = 99.999
_SAMPLE = 50_000  # values kept per tensor and position for the percentiles


def _quantized_ops(ops: OpList) -> list[Any]:
    """The Conv and constant-weight MatMul ops inside trunk blocks."""
    chosen = []
    for op in ops.ops:
        if not op.scope.startswith("block") or "/scores" in op.scope:
            continue
        if op.kind == "Conv" or (op.kind == "MatMul" and ops.const(op.inputs[1]) is not None):
            chosen.append(op)
    return chosen


def calibrate(proto: Any, feeds: list[dict[str, np.ndarray]], names: list[str],
              percentile: float = PERCENTILE, seed: int = 3) -> dict[str, tuple[float, float]]:
    """(low, high) of each named activation over the calibration inputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = names
    samples: dict[str, list[np.ndarray]] = {n: [] for n in names}
    extremes: dict[str, list[float]] = {n: [np.inf, -np.inf] for n in names}
    rng = np.random.default_rng(seed)
    for feed in feeds:
        for name, value in zip(wanted, session.run(wanted, feed), strict=True):
            flat = value.reshape(-1)
            extremes[name][0] = min(extremes[name][0], float(flat.min()))
            extremes[name][1] = max(extremes[name][1], float(flat.max()))
            samples[name].append(flat if flat.size <= _SAMPLE else rng.choice(flat, _SAMPLE))
    ranges = {}
    for name in names:
        values = np.concatenate(samples[name])
        low = float(np.percentile(values, 100.0 - percentile))
        high = float(np.percentile(values, percentile))
        ranges[name] = (min(low, 0.0), max(high, 0.0))  # zero must be exact (padding, mask)
    return ranges


def _activation(low: float, high: float) -> Quantization:
    scale = max(high - low, 1e-8) / 255.0
    zero = int(np.clip(round(-128 - low / scale), -128, 127))
    return Quantization([scale], [zero])


class Int8Layers(WeightPolicy):
    def __init__(self, chosen: set[str], ranges: dict[str, tuple[float, float]],
                 inputs_of: dict[str, str]) -> None:
        self.chosen = chosen  # ONNX outputs of the layers to quantize
        self.ranges = ranges
        self.inputs_of = inputs_of
        self._scales: dict[int, np.ndarray] = {}

    def weights(self, writer: TFLiteWriter, array: np.ndarray, name: str) -> int:
        layer = name.removesuffix("_w")
        if layer not in self.chosen:
            return writer.const(array, name)
        flat = np.abs(array.reshape(array.shape[0], -1)).max(axis=1)
        scale = np.maximum(flat, 1e-12) / 127.0
        shape = (-1,) + (1,) * (array.ndim - 1)
        q = np.clip(np.round(array / scale.reshape(shape)), -127, 127).astype(np.int8)
        index = writer.const(q, name + "_int8",
                             Quantization([float(s) for s in scale], [0] * len(scale), axis=0))
        self._scales[index] = scale
        return index

    def wrap(self, writer: TFLiteWriter, op: str, x: int, w: int, bias: int, out: int,
             options_kind: str, options: dict[str, Any], scope: str) -> None:
        if w not in self._scales:
            super().wrap(writer, op, x, w, bias, out, options_kind, options, scope)
            return
        layer = writer.model.tensors[out].name
        q_in = _activation(*self.ranges[self.inputs_of[layer]])
        q_out = _activation(*self.ranges[layer])
        x_shape = writer.model.tensors[x].shape
        y_shape = writer.model.tensors[out].shape
        xq = writer.tensor(f"{layer}_in_q", x_shape, np.int8, quant=q_in)
        writer.emit("QUANTIZE", [x], [xq])
        w_scale = self._scales[w]
        bias_scale = [float(q_in.scale[0] * s) for s in w_scale]
        bq = writer.const(np.zeros(len(w_scale), np.int32), f"{layer}_bias_q",
                          Quantization(bias_scale, [0] * len(w_scale), axis=0))
        yq = writer.tensor(f"{layer}_q", y_shape, np.int8, quant=q_out)
        writer.emit(op, [xq, w, bq], [yq], options_kind, options,
                    version=5 if op == "CONV_2D" else 9)
        writer.emit("DEQUANTIZE", [yq], [out], version=2)


def int8_tflite(ops: OpList, proto: Any, feeds: list[dict[str, np.ndarray]],
                percentile: float = PERCENTILE) -> bytes:
    import json

    if not feeds:
        raise ModelError("INT8 needs calibration inputs")
    chosen = _quantized_ops(ops)
    if not chosen:
        raise ModelError(f"{ops.name}: no trunk-block layers to quantize")
    inputs_of = {op.output: op.inputs[0] for op in chosen}
    names = sorted({*inputs_of, *inputs_of.values()})
    ranges = calibrate(proto, feeds, names, percentile)
    policy = Int8Layers(set(inputs_of), ranges, inputs_of)
    writer = TFLiteWriter(averaged_sums(ops), policy)
    model = writer.build()
    model.description = f"katapool: {ops.name} (int8)"
    meta = dict(ops.metadata)
    meta.update(precision="int8", int8_layers=str(len(chosen)),
                calibration=f"{len(feeds)} positions, percentile {percentile}")
    model.metadata["katapool"] = json.dumps(meta, sort_keys=True).encode()
    return serialize(model)
