"""A KataGo network as a Core ML ML Program (``.mlpackage``), written op by op from the op list.

The op list (``oplist.from_onnx``) is katapool's ONNX export read back with static shapes, so
the Core ML program computes exactly what the ONNX export computes. Each ONNX operator becomes
one MIL operator built with coremltools' MIL builder; coremltools' own passes then fuse what
they know (norm multipliers into convolution weights, x·sigmoid(x) into silu, ...).

Layout: MIL convolutions are NCHW like ONNX, so tensors keep their shapes and names;
``InputSpatial`` [N, C, H, W] carries the on-board mask as channel 0, as in KataGo. The batch is
flexible (1 to ``MAX_BATCH``) unless ``batch`` fixes it. FP16 computes in half precision with
FP32 inputs and outputs, as KataGo's own Core ML backend does.

Nothing here can run the model: Core ML's runtime exists only on Apple systems. What can be
checked on Linux is in ``coreml_check`` (structure) and ``coreml_replay`` (numerics of the
saved program, replayed with ONNX Runtime).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from katapool.errors import ModelError
from katapool.models.oplist import BATCH, Op, OpList, averaged_sums

PRECISIONS = ("fp32", "fp16")
MAX_BATCH = 256  # upper bound of the flexible batch
FP16_MAX = 65504.0
DEFAULT_DEPLOYMENT = "iOS15"  # the first target with ML Programs (also macOS 12)
MISSING = "Core ML export needs coremltools: pip install 'katapool[coreml]'"

DESCRIPTIONS = {
    "InputSpatial": "board features [N, C, H, W]; channel 0 is 1 on the board, 0 off it",
    "InputGlobal": "global features [N, G] (komi, rules, pass history, ...)",
    "InputMeta": "human-SL metadata features [N, 192]",
    "OutputPolicyPass": "pass logits [N, P]",
    "OutputPolicy": "move logits [N, P, H, W]",
    "OutputValue": "win/loss/no-result logits [N, 3]",
    "OutputScoreValue": "score mean, stdev, lead, ... before scaling [N, S]",
    "OutputOwnership": "ownership before tanh [N, 1, H, W]",
    "Policy": "move + pass probabilities (policy channel 0) [N, H*W+1]",
    "Value": "win/loss/no-result probabilities [N, 3]",
    "ScoreMean": "score mean in points [N, 1]",
    "ScoreStdev": "score standard deviation in points [N, 1]",
    "ScoreLead": "score lead in points [N, 1]",
    "Ownership": "ownership in [-1, 1] [N, 1, H, W]",
}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """coremltools' chatter goes nowhere: on Linux its import logs "Failed to load
    _MLModelProxy..." (the native runtime is macOS-only) and conversions draw progress bars.
    katapool's stdout carries results only. (Process-wide while it lasts: meant for the CLI
    and tests, not for a daemon's threads.)"""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            yield
    finally:
        logger.setLevel(level)


def import_coremltools() -> Any:
    """coremltools, imported quietly on first use (it is an optional extra)."""
    try:
        with quiet():
            import coremltools
    except ImportError:
        raise ModelError(MISSING) from None
    except Exception as exc:  # installed but broken (e.g. built against another numpy)
        raise ModelError(f"coremltools is installed but does not import: {exc}") from exc
    return coremltools


# --- the translation --------------------------------------------------------------------------

def conv_weight(w: np.ndarray) -> np.ndarray:
    """ONNX and MIL both take convolution weights as [out, in, kY, kX]: nothing to change (one
    place, so that tests can wire it wrong on purpose)."""
    return w


def _mil_array(value: np.ndarray) -> np.ndarray:
    """MIL has no int64 tensors on iOS15: indices become int32."""
    if value.dtype == np.int64:
        return value.astype(np.int32)
    if value.dtype == np.float64:
        return value.astype(np.float32)
    return value


class _Writer:
    def __init__(self, ops: OpList, mb: Any) -> None:
        self.ops = ops
        self.mb = mb
        self.vars: dict[str, Any] = {}
        self.handlers: dict[str, Callable[[Op], Any]] = {
            "Add": self.binary("add"), "Sub": self.binary("sub"), "Mul": self.binary("mul"),
            "Div": self.binary("real_div"), "Relu": self.unary("relu"),
            "Sigmoid": self.unary("sigmoid"), "Tanh": self.unary("tanh"),
            "Softplus": self.unary("softplus"), "Sqrt": self.unary("sqrt"),
            "Identity": self.unary("identity"), "Conv": self.conv, "MatMul": self.matmul,
            "Softmax": self.softmax, "ReduceSum": self.reduce("reduce_sum"),
            "ReduceMean": self.reduce("reduce_mean"), "ReduceMax": self.reduce("reduce_max"),
            "Concat": self.concat, "Flatten": self.reshape, "Reshape": self.reshape,
            "Unsqueeze": self.unsqueeze, "Transpose": self.transpose, "Gather": self.gather,
            "Slice": self.slice,
        }

    def where(self, op: Op) -> str:
        return f"{op.scope}/{op.output}" if op.scope else op.output

    def value(self, name: str) -> Any:
        """A computed tensor, or a constant made once (shared RoPE tables stay shared)."""
        if name not in self.vars:
            const = self.ops.const(name)
            if const is None:
                raise ModelError(f"{name}: used before it is computed, and not a constant")
            self.vars[name] = self.mb.const(val=_mil_array(const), name=name)
        return self.vars[name]

    def write(self, op: Op) -> None:
        handler = self.handlers.get(op.kind)
        if handler is None:
            raise ModelError(f"{self.where(op)}: operator {op.kind} has no Core ML translation "
                             "in katapool's writer")
        self.vars[op.output] = handler(op)

    # --- one method per ONNX operator ---------------------------------------------------------

    def binary(self, kind: str) -> Callable[[Op], Any]:
        def make(op: Op) -> Any:
            a, b = (self.value(i) for i in op.inputs)
            return getattr(self.mb, kind)(x=a, y=b, name=op.output)
        return make

    def unary(self, kind: str) -> Callable[[Op], Any]:
        def make(op: Op) -> Any:
            return getattr(self.mb, kind)(x=self.value(op.inputs[0]), name=op.output)
        return make

    def conv(self, op: Op) -> Any:
        weight = self.ops.const(op.inputs[1])
        if weight is None or op.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ModelError(f"{self.where(op)}: only convolutions with constant weights and "
                             "explicit pads are translated")
        y0, x0, y1, x1 = op.attrs.get("pads", [0, 0, 0, 0])
        extra: dict[str, Any] = {}
        if len(op.inputs) > 2:
            extra["bias"] = self.value(op.inputs[2])
        return self.mb.conv(x=self.value(op.inputs[0]), weight=conv_weight(weight),
                            strides=list(op.attrs.get("strides", [1, 1])), pad_type="custom",
                            pad=[y0, y1, x0, x1],  # MIL: top, bottom, left, right
                            dilations=list(op.attrs.get("dilations", [1, 1])),
                            groups=int(op.attrs.get("group", 1)), name=op.output, **extra)

    def matmul(self, op: Op) -> Any:
        a, b = op.inputs
        weight = self.ops.const(b)
        if weight is not None and weight.ndim == 2 and len(self.ops.shape(a)) <= 3:
            # A layer: Core ML's linear (weight [out, in]), which it maps to its fast paths.
            return self.mb.linear(x=self.value(a), weight=np.ascontiguousarray(weight.T),
                                  name=op.output)
        return self.mb.matmul(x=self.value(a), y=self.value(b), name=op.output)

    def softmax(self, op: Op) -> Any:
        return self.mb.softmax(x=self.value(op.inputs[0]), axis=int(op.attrs.get("axis", -1)),
                               name=op.output)

    def reduce(self, kind: str) -> Callable[[Op], Any]:
        def make(op: Op) -> Any:
            # ReduceSum takes its axes as an input since opset 13; the others still as an
            # attribute in opset 17.
            axes = self.ops.ints(op.inputs[1]) if len(op.inputs) > 1 else op.attrs.get("axes")
            if not axes:
                raise ModelError(f"{self.where(op)}: a reduction over all axes is not translated")
            return getattr(self.mb, kind)(x=self.value(op.inputs[0]), axes=list(axes),
                                          keep_dims=bool(op.attrs.get("keepdims", 1)),
                                          name=op.output)
        return make

    def concat(self, op: Op) -> Any:
        return self.mb.concat(values=[self.value(i) for i in op.inputs],
                              axis=int(op.attrs["axis"]), interleave=False, name=op.output)

    def reshape(self, op: Op) -> Any:
        """Flatten and Reshape to the output shape the op list knows, the batch as -1."""
        shape = list(self.ops.shape(op.output))
        if shape.count(BATCH) > 1 or (BATCH in shape and shape[0] != BATCH):
            raise ModelError(f"{self.where(op)}: reshape to {shape} mixes the batch into "
                             "another dimension")
        return self.mb.reshape(x=self.value(op.inputs[0]), shape=shape, name=op.output)

    def unsqueeze(self, op: Op) -> Any:
        return self.mb.expand_dims(x=self.value(op.inputs[0]), axes=self.ops.ints(op.inputs[1]),
                                   name=op.output)

    def transpose(self, op: Op) -> Any:
        return self.mb.transpose(x=self.value(op.inputs[0]), perm=list(op.attrs["perm"]),
                                 name=op.output)

    def gather(self, op: Op) -> Any:
        indices = self.ops.const(op.inputs[1])
        if indices is None:
            raise ModelError(f"{self.where(op)}: only gathers with constant indices are translated")
        return self.mb.gather(x=self.value(op.inputs[0]), indices=indices.astype(np.int32),
                              axis=int(op.attrs.get("axis", 0)), name=op.output)

    def slice(self, op: Op) -> Any:
        """ONNX Slice on a few axes -> slice_by_index on all of them, the rest masked whole."""
        shape = self.ops.shape(op.inputs[0])
        rank = len(shape)
        starts, ends = self.ops.ints(op.inputs[1]), self.ops.ints(op.inputs[2])
        axes = self.ops.ints(op.inputs[3]) if len(op.inputs) > 3 else list(range(len(starts)))
        steps = self.ops.ints(op.inputs[4]) if len(op.inputs) > 4 else [1] * len(starts)
        begin, end, stride = [0] * rank, [0] * rank, [1] * rank
        begin_mask, end_mask = [True] * rank, [True] * rank
        for axis, start, stop, step in zip(axes, starts, ends, steps, strict=True):
            axis %= rank
            if step < 1 or start < 0 or stop < 0:
                raise ModelError(f"{self.where(op)}: only forward slices from the start are "
                                 "translated")
            begin[axis], begin_mask[axis], stride[axis] = start, False, step
            if shape[axis] == BATCH or stop < shape[axis]:
                end[axis], end_mask[axis] = stop, False
        return self.mb.slice_by_index(x=self.value(op.inputs[0]), begin=begin, end=end,
                                      stride=stride, begin_mask=begin_mask, end_mask=end_mask,
                                      name=op.output)


def _program(ops: OpList, ct: Any, target: Any, batch: int | None) -> Any:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, get_new_symbol

    n: Any = get_new_symbol() if batch is None else batch  # one symbol: every input agrees
    specs = {t.name: mb.placeholder(shape=tuple(n if d == BATCH else d for d in t.shape))
             for t in ops.inputs}
    writer = _Writer(ops, mb)
    with Function(specs, opset_version=target) as main:
        writer.vars.update(main.inputs)
        for op in ops.ops:
            writer.write(op)
        missing = [t.name for t in ops.outputs if t.name not in writer.vars]
        if missing:
            raise ModelError(f"outputs never computed: {', '.join(missing)}")
        main.set_outputs([writer.vars[t.name] for t in ops.outputs])
    program = Program()
    program.add_function("main", main)
    return program


def deployment_target(ct: Any, deployment: str) -> Any:
    target = getattr(ct.target, deployment, None)
    if target is None or not deployment.startswith(("iOS", "macOS", "watchOS", "tvOS")):
        raise ModelError(f"unknown Core ML deployment target {deployment!r} (e.g. iOS15, iOS17, "
                         "macOS13)")
    if target < ct.target.iOS15:
        raise ModelError(f"deployment target {deployment}: ML Programs need iOS15 / macOS12 or newer")
    return target


def _check_fp16_range(ops: OpList) -> None:
    """A weight beyond FP16's range would become infinity in the package: say so instead."""
    for op in ops.ops:
        if op.kind not in ("Conv", "MatMul"):
            continue
        weights = ops.const(op.inputs[1])
        if weights is not None and weights.size:
            largest = float(np.abs(weights).max())
            if largest > FP16_MAX:
                raise ModelError(f"{op.scope or op.output}: a weight of {largest:.4g} is beyond "
                                 f"FP16's range (±{FP16_MAX:g}); this network cannot be stored "
                                 "in FP16: export it in FP32")


def build_coreml(ops: OpList, precision: str = "fp32", batch: int | None = None,
                 deployment: str = DEFAULT_DEPLOYMENT) -> Any:
    """The op list as a ``coremltools.models.MLModel`` (an ML Program, not yet saved).

    ``batch`` None: inputs take any batch from 1 to ``MAX_BATCH`` (``ct.RangeDim``); an integer
    fixes it. FP16 computes in half precision with FP32 inputs and outputs."""
    if precision not in PRECISIONS:
        raise ModelError(f"Core ML precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise ModelError(f"batch {batch}: choose 1 to {MAX_BATCH}, or a flexible batch")
    ct = import_coremltools()
    target = deployment_target(ct, deployment)
    if precision == "fp16":
        _check_fp16_range(ops)
    ops = averaged_sums(ops)
    dim: Any = ct.RangeDim(1, MAX_BATCH, default=1) if batch is None else batch
    inputs = [ct.TensorType(name=t.name, dtype=np.float32,
                            shape=tuple(dim if d == BATCH else d for d in t.shape))
              for t in ops.inputs]
    compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    with quiet():
        program = _program(ops, ct, target, batch)
        try:
            model = ct.convert(program, convert_to="mlprogram", inputs=inputs,
                               minimum_deployment_target=target, compute_precision=compute,
                               skip_model_load=sys.platform != "darwin")
        except ModelError:
            raise
        except Exception as exc:  # coremltools' failures share no common type
            raise ModelError(f"Core ML conversion failed: {exc}") from exc
    _describe(model, ops, precision, batch)
    return model


def _describe(model: Any, ops: OpList, precision: str, batch: int | None) -> None:
    """The ONNX export's metadata (KataGo's model fields) plus what this file is."""
    meta = model.user_defined_metadata
    for key, value in ops.metadata.items():
        meta[key] = value
    meta["katapool.precision"] = precision
    meta["katapool.batch"] = f"1-{MAX_BATCH}" if batch is None else str(batch)
    name = ops.metadata.get("name", ops.name)
    model.author = "katapool"
    model.short_description = (f"KataGo network {name}, {precision.upper()} compute, FP32 "
                               "inputs and outputs (written by katapool model export-coreml)")
    for tensors, described in ((ops.inputs, model.input_description),
                               (ops.outputs, model.output_description)):
        for tensor in tensors:
            if tensor.name in DESCRIPTIONS:
                described[tensor.name] = DESCRIPTIONS[tensor.name]


# --- the whole export -------------------------------------------------------------------------

@dataclass
class CoreMLResult:
    """What ``export_coreml`` made and checked; ``path`` is None when a check failed (then
    nothing was written)."""

    path: Path | None
    precision: str
    batch: int | None
    size_bytes: int
    checks: list[tuple[str, bool, str]]
    op_counts: dict[str, int]
    replay_errors: dict[str, float]  # per output: max |replay - ONNX| / max(1, max |ONNX|)
    replay_limit: float
    not_verified: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "passed": self.passed,
                "precision": self.precision, "batch": self.batch, "size_bytes": self.size_bytes,
                "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in self.checks],
                "op_counts": self.op_counts, "replay_errors": self.replay_errors,
                "replay_limit": self.replay_limit, "not_verified": self.not_verified}


def _put_in_place(built: Path, output: Path) -> None:
    """A directory cannot be swapped atomically over another: the old package steps aside
    first and goes only once the new one is in place."""
    old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
    if output.exists():
        os.replace(output, old)
    try:
        os.replace(built, output)
    except OSError:
        if old.exists():
            os.replace(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)


Check = Callable[[Path], tuple[str, bool, str]]


def export_coreml(model_path: Path, output: Path, precision: str = "fp16", board: int = 19,
                  batch: int | None = None, postprocess: bool = False,
                  extra_checks: Sequence[Check] = (),
                  deployment: str = DEFAULT_DEPLOYMENT) -> CoreMLResult:
    """Builds the Core ML package of a KataGo network file, checks it (structure, and the saved
    program replayed with ONNX Runtime against the ONNX export on synthetic positions) and
    puts it at ``output`` (a ``.mlpackage`` directory) only if every check passed."""
    from katapool.models.coreml_check import NOT_VERIFIED, check_coreml
    from katapool.models.coreml_replay import REPLAY_LIMITS, compare_with_onnx
    from katapool.models.desc import load_model
    from katapool.models.export_onnx import export_onnx
    from katapool.models.oplist import from_onnx

    output = Path(output)
    if output.suffix != ".mlpackage":
        raise ModelError(f"{output}: a Core ML package is a directory named *.mlpackage")
    if output.exists() and not output.is_dir():
        # It would be set aside for the package and never removed (a folder's removal).
        raise ModelError(f"{output} is a file, not a Core ML package (a directory)")
    if precision not in PRECISIONS:
        raise ModelError(f"Core ML precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if not output.parent.is_dir():
        raise ModelError(f"{output.parent}: no such directory")
    proto = export_onnx(load_model(model_path), board=board, postprocess=postprocess)
    ops = from_onnx(proto)
    model = build_coreml(ops, precision, batch, deployment)
    work = output.with_name(f".{output.name}.partial-{uuid.uuid4().hex[:8]}")
    work.mkdir()
    try:
        built = work / output.name
        with quiet():
            model.save(str(built))
        check = check_coreml(built, ops, precision, batch)
        errors = compare_with_onnx(built, proto, batch=batch or 3)
        limit = REPLAY_LIMITS[precision]
        worst = max(errors.values())
        checks = [*check.checks,
                  ("replay", bool(np.isfinite(worst)) and worst <= limit,
                   f"saved program replayed with ONNX Runtime against the ONNX export: worst "
                   f"relative error {worst:.2e} (limit {limit:.0e})")]
        if all(ok for _, ok, _ in checks):  # e.g. the replay against the engine (the CLI)
            checks += [check_fn(built) for check_fn in extra_checks]
        result = CoreMLResult(None, precision, batch, check.size_bytes, checks, check.op_counts,
                              errors, limit, list(NOT_VERIFIED))
        if result.passed:
            from katapool.models.export_check import ordinary_modes

            ordinary_modes(built)  # coremltools saves owner-only files (it builds in a temp dir)
            _put_in_place(built, output)
            result.path = output
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
