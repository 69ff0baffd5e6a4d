"""FP16 and INT8 versions of katapool's ONNX exports, for runtimes other than the engine.

Which parts stay in higher precision is read from the node names the exporter gives
(``stem/…``, ``block3/rms/…``, ``policy/…``): KataGo's own TensorRT path keeps the trunk tip,
the heads, norm reductions and global pooling sums in FP32 for FP16 and we follow it; INT8 only
touches the convolutions and matrix products of the trunk blocks.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from katapool.errors import ModelError

# Whole network parts kept in FP32 for FP16, and never quantized to INT8.
HIGH_PRECISION_PARTS = frozenset({"mask", "stem", "tip", "policy", "value", "post"})
# Sub-steps inside trunk blocks that reduce over many values (sums of squares, board sums)
# or multiply two activations (attention scores).
FP16_KEEP_STEPS = frozenset({"rms", "pool"})
INT8_SKIP_STEPS = frozenset({"rms", "pool", "scores"})

CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")


def _parts(node: Any) -> list[str]:
    return str(node.name).split("/")[:-1]


def check_katapool_export(proto: Any) -> None:
    """Quantization needs the part names katapool's exporter writes; KataGo's own ONNX files
    (``dumponnx``) name nodes differently."""
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("producer") != "katapool" or not any("/" in n.name for n in proto.graph.node):
        raise ModelError("this ONNX file was not made by `katapool model export-onnx` (its "
                         "nodes carry no part names, so the layers to keep in higher precision "
                         "cannot be found): export the .bin.gz network with katapool first")
    if any(init.data_type in (10, 3) for init in proto.graph.initializer):  # FLOAT16, INT8
        raise ModelError("this ONNX file is already quantized: start from the FP32 export")


def fp16_kept_nodes(proto: Any) -> list[str]:
    kept = []
    for node in proto.graph.node:
        parts = _parts(node)
        if (parts and parts[0] in HIGH_PRECISION_PARTS) or FP16_KEEP_STEPS & set(parts):
            kept.append(node.name)
    return kept


def int8_excluded_nodes(proto: Any) -> list[str]:
    excluded = []
    weights = {init.name for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul"):
            continue
        parts = _parts(node)
        if ((parts and parts[0] in HIGH_PRECISION_PARTS) or INT8_SKIP_STEPS & set(parts)
                or not weights & set(node.input)):  # activation x activation
            excluded.append(node.name)
    return excluded


def to_fp16(proto: Any) -> Any:
    """FP16 weights and activations; inputs, outputs and the kept parts in FP32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    check_katapool_export(proto)
    kept = fp16_kept_nodes(proto)
    try:
        converted = convert_float_to_float16(proto, keep_io_types=True, node_block_list=kept)
    except Exception as exc:  # the converter's own failures carry no common type
        raise ModelError(f"FP16 conversion failed: {exc}") from exc
    drop_repeated_nodes(converted.graph)
    _skip_fp16_between_kept(converted, set(kept))
    mark_precision(converted, "fp16")
    return converted


def drop_repeated_nodes(graph: Any) -> None:
    """Older converters (ONNX Runtime 1.30) insert the same cast twice when one tensor feeds
    two inputs of a kept node (x·x), which ONNX Runtime then refuses as an invalid model."""
    seen: dict[str, bytes] = {}
    for node in list(graph.node):
        key = node.SerializeToString()
        if node.output and seen.get(node.output[0]) == key:
            graph.node.remove(node)
        elif node.output:
            seen[node.output[0]] = key


def _skip_fp16_between_kept(proto: Any, kept: set[str]) -> None:
    """The converter casts every kept node's output to FP16 and back, even when the consumer
    is kept too: a sum of squares over the board would overflow right there. Consumers read
    the FP32 value instead; casts nobody reads any more are dropped."""
    nodes = proto.graph.node
    producer = {out: n for n in nodes for out in n.output}

    def cast_to(node: Any) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) \
            if node.op_type == "Cast" else None

    graph_inputs = {i.name for i in proto.graph.input}  # FP32: the converter keeps I/O types
    shortcut: dict[str, str] = {}
    for node in nodes:
        if cast_to(node) != 1:  # FLOAT
            continue
        back = producer.get(node.input[0])
        if back is None or cast_to(back) != 10:  # FLOAT16
            continue
        origin = producer.get(back.input[0])
        if back.input[0] in graph_inputs or (origin is not None and origin.name in kept):
            shortcut[node.output[0]] = back.input[0]
    for node in nodes:
        if node.name in kept:
            for i, name in enumerate(node.input):
                node.input[i] = shortcut.get(name, name)
    graph_outputs = {o.name for o in proto.graph.output}
    while True:  # drop casts whose outputs nobody reads
        read = {name for n in nodes for name in n.input} | graph_outputs
        dead = [n for n in nodes if n.op_type == "Cast" and not read & set(n.output)]
        if not dead:
            break
        for n in dead:
            nodes.remove(n)
    made = {out for n in nodes for out in n.output}
    stale = [v for v in proto.graph.value_info if v.name not in made]
    for v in stale:
        proto.graph.value_info.remove(v)
    _sort_topologically(proto.graph)


def _sort_topologically(graph: Any) -> None:
    """ONNX requires producers before consumers; the converter appends its casts at the end
    (ONNX Runtime sorts for itself, TensorRT's parser and onnx.checker do not)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[Any] = []
    while pending:
        still = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                still.append(node)
        if len(still) == len(pending):
            raise ModelError(f"the converted graph has a cycle or a missing input at "
                             f"{still[0].name}")
        pending = still
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


@dataclass(frozen=True)
class Int8Options:
    method: str = "percentile"  # one of CALIBRATION_METHODS
    percentile: float = 99.999
    batch: int = 8  # calibration positions per inference run
    # "int8": symmetric signed activations, what TensorRT's explicit quantization takes.
    # "uint8": asymmetric unsigned activations, which ONNX Runtime's x86 CPU kernels fuse
    # far more often (U8S8); see docs/quantization.md for the measured difference.
    activations: str = "int8"
    # 7-bit weights: what ONNX Runtime advises for unsigned activations on x86 CPUs without
    # VNNI, whose u8 x s8 kernels can saturate 16-bit sums (measured in docs/quantization.md).
    reduce_range: bool = False


class _Batches:
    """ONNX Runtime's calibration data reader over engine-made inputs, in batches. It also
    takes ``set_range`` (in batches), so that ONNX Runtime calibrates one batch at a time:
    its calibrators otherwise keep every intermediate tensor of every batch until the end —
    measured: 96 positions of KaTrain's b10c384 took more than this machine's 23 GiB."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]], batch: int) -> None:
        self._batches = [
            {name: np.concatenate([f[name] for f in feeds[i:i + batch]]) for name in feeds[0]}
            for i in range(0, len(feeds), batch)]
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self._batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:  # part of ORT's reader protocol; one pass is all we make
        pass


def int8_candidates(proto: Any) -> list[str]:
    """The convolutions and matrix products INT8 may touch, in graph order."""
    excluded = set(int8_excluded_nodes(proto))
    return [n.name for n in proto.graph.node
            if n.op_type in ("Conv", "MatMul") and n.name not in excluded]


def to_int8(proto: Any, calibration: Sequence[dict[str, np.ndarray]],
            options: Int8Options | None = None, exclude: Sequence[str] | None = None,
            include: Sequence[str] | None = None, ranges: Path | None = None) -> Any:
    """Post-training static quantization: Q/DQ, symmetric INT8 activations and per-channel
    weights, calibrated on ``calibration`` (input feeds of real positions). ``exclude``: the
    nodes left in FP32 (default: ``int8_excluded_nodes``); ``include``: only these nodes
    INT8 (mixed precision). ``ranges``: a file keeping the calibrated activation ranges, read
    when it exists and written when not, so that many subsets cost one calibration."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    options = options or Int8Options()
    check_katapool_export(proto)
    if not calibration and not (ranges is not None and ranges.is_file()):
        raise ModelError("INT8 quantization needs calibration positions")
    if options.method not in CALIBRATION_METHODS:
        raise ModelError(f"calibration method {options.method!r}: use one of "
                         f"{', '.join(CALIBRATION_METHODS)}")
    # "mse": ranges of our own (_mse_cache), handed over as a percentile calibration's.
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy, "mse": CalibrationMethod.Percentile,
              }[options.method]
    if options.activations not in ("int8", "uint8"):
        raise ModelError(f"activations {options.activations!r}: use int8 or uint8")
    signed = options.activations == "int8"
    # Matrix products keep FP32 outputs: ONNX Runtime's CPU provider then runs them as
    # integer products with a float result (faster than with a quantized output, measured in
    # docs/quantization.md) and no rounding is added after them. Convolutions keep quantized
    # outputs: without one ONNX Runtime runs them as float convolutions (0.7x FP32).
    extra: dict[str, Any] = {"ActivationSymmetric": signed, "WeightSymmetric": True,
                             "OpTypesToExcludeOutputQuantization": ["MatMul"]}
    if options.method == "percentile":
        extra["CalibPercentile"] = options.percentile
    # One batch at a time (bounded memory; see _Batches). ONNX Runtime names the option for
    # min/max, but its loop serves every calibrator, and histograms accumulate across calls.
    # (Its own CalibMaxIntermediateOutputs failed with "No data is collected" whenever it
    # divided the number of batches.)
    extra["CalibStridedMinMax"] = 1
    with tempfile.TemporaryDirectory(prefix="katapool-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(src))
        cache = ranges
        if options.method == "mse" and not (ranges is not None and ranges.is_file()):
            cache = ranges if ranges is not None else Path(tmp) / "ranges.json"
            _mse_cache(src, calibration, options, cache, Path(tmp))
        # ONNX Runtime prints its calibration progress on stdout, which belongs to the caller,
        # and advises a pre-processing pass that would rename the nodes we exclude by name.
        with contextlib.redirect_stdout(sys.stderr), _without_preprocessing_advice(), \
                as_model_error("INT8 quantization"):
            quantize_static(str(src), str(dst),
                            _Batches(calibration, options.batch) if calibration else None,
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "MatMul"],
                            per_channel=True, reduce_range=options.reduce_range,
                            activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(exclude if exclude is not None
                                                  else int8_excluded_nodes(proto)),
                            nodes_to_quantize=list(include) if include is not None else None,
                            calibrate_method=method, extra_options=extra,
                            calibration_cache_path=cache)
        quantized = onnx.load(str(dst))
    mark_precision(quantized, f"int8 ({'' if signed else 'u8 activations, '}{options.method}, "
                     f"{len(calibration)} positions)")
    return quantized


def mse_clip(counts: np.ndarray, edges: np.ndarray, top: float, levels: int,
             steps: int = 400) -> float:
    """The clip T (0 < T <= ``top``) of least squared error over a histogram of |x|, when
    [0, T] is rounded to ``levels`` steps and larger values are cut to T."""
    centres = (edges[:-1] + edges[1:]) / 2
    weights = counts.astype(np.float64)
    best, best_error = top, np.inf
    for clip in np.linspace(top / steps, top, steps):
        step = clip / levels
        # Inside: uniform rounding noise, but never more than the value itself (below half a
        # step a value rounds to 0 — most of a ReLU output's values are such).
        error = float(weights @ np.where(centres > clip, (centres - clip) ** 2,
                                         np.minimum(step * step / 12, centres * centres)))
        if error < best_error:
            best, best_error = float(clip), error
    return best


def _mse_cache(src: Path, calibration: Sequence[dict[str, np.ndarray]], options: Int8Options,
               cache: Path, tmp: Path) -> None:
    """Activation ranges of least squared error — the "MSE" choice of the quantization
    literature, which ONNX Runtime does not offer — written as its calibration cache: each
    tensor's histogram of |x| (ONNX Runtime's collector, one batch at a time), then per tensor
    the clip that ``mse_clip`` finds."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
        create_calibrator,
        save_tensors_data,
    )

    with contextlib.redirect_stdout(sys.stderr), as_model_error("INT8 calibration"):
        calibrator = create_calibrator(src, ["Conv", "MatMul"],
                                       augmented_model_path=str(tmp / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Percentile,
                                       extra_options={"symmetric": True, "num_bins": 2048})
        batches = _Batches(calibration, options.batch)
        for i in range(len(batches)):
            batches.set_range(i, i + 1)
            calibrator.collect_data(batches)
    signed = options.activations == "int8"
    ranges = {}
    for name, (counts, edges, lowest, highest, *_) in calibrator.collector.histogram_dict.items():
        lo, hi = min(0.0, float(lowest)), max(0.0, float(highest))
        top = max(-lo, hi)
        if top <= 0:  # all zeros
            low = high = 0.0
        elif signed:  # [-T, T] in 254 steps
            high = mse_clip(counts, edges, top, 127)
            low = -high
        else:  # [lo, hi] in 255 steps, the larger side holding its share of them
            f = mse_clip(counts, edges, top, max(1, round(255 * top / (hi - lo)))) / top
            low, high = f * lo, f * hi
        dtype = np.asarray(lowest).dtype
        ranges[name] = TensorData(lowest=np.array(low, dtype=dtype),
                                  highest=np.array(high, dtype=dtype))
    save_tensors_data(TensorsData(CalibrationMethod.Percentile, ranges), cache)


@contextlib.contextmanager
def as_model_error(what: str) -> Iterator[None]:
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:  # ONNX Runtime raises plain exceptions of many kinds
        raise ModelError(f"{what} failed: {exc}") from exc


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def mark_precision(proto: Any, precision: str) -> None:
    props = {p.key: p for p in proto.metadata_props}
    if "katapool_precision" in props:
        props["katapool_precision"].value = precision
    else:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "katapool_precision", precision


def precision_of(proto: Any) -> str:
    """"fp32", "fp16" or "int8 (...)", from katapool's mark or, failing that, the tensors."""
    for prop in proto.metadata_props:
        if prop.key == "katapool_precision":
            return str(prop.value)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        return "int8"
    if any(init.data_type == 10 for init in proto.graph.initializer):
        return "fp16"
    return "fp32"
