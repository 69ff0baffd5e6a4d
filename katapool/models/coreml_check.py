"""Structural checks of a saved Core ML package against the op list it was written from.

Everything here reads the file back on Linux: the package, its interface, its metadata and the
ML Program itself (op types and tensor types). Core ML's runtime is macOS/iOS-only, so
``NOT_VERIFIED`` says plainly what these checks (and the ONNX Runtime replay) leave open.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from katapool.models.export_coreml import MAX_BATCH, import_coremltools, quiet
from katapool.models.oplist import BATCH, OpList

NOT_VERIFIED = (
    "Core ML's own numerics: predict() runs only on macOS/iOS; here the saved program was "
    "replayed op by op with ONNX Runtime instead",
    "that Apple's compiler (coremlcompiler, MLModel.compileModel) accepts the package",
    "which compute unit (Neural Engine, GPU, CPU) runs each op, and whether the Neural Engine "
    "takes the flexible batch",
    "speed and memory on Apple hardware",
)


@dataclass
class CoreMLCheck:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    # FP32 compute ops of an FP16 program (or FP16 ops of an FP32 one): should be none.
    off_precision_ops: list[str] = field(default_factory=list)
    size_bytes: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def add(self, check: str, ok: bool, detail: str) -> None:
        self.checks.append((check, ok, detail))


def package_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _dims(shape: Any) -> list[int | None]:
    """A MIL shape with None for the symbolic (batch) dimension."""
    return [d if isinstance(d, int) else None for d in shape]


def _expected(shape: tuple[int, ...], batch: int | None) -> list[int | None]:
    return [batch if d == BATCH else d for d in shape]


def _input_problems(spec: Any, ops: OpList, batch: int | None) -> list[str]:
    problems = []
    described = {i.name: i.type.multiArrayType for i in spec.description.input}
    for tensor in ops.inputs:
        array = described.get(tensor.name)
        if array is None:
            continue
        if array.dataType != array.FLOAT32:
            problems.append(f"{tensor.name} is not FP32")
        if batch is None:
            ranges = [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
            want = [(1, MAX_BATCH) if d == BATCH else (d, d) for d in tensor.shape]
            if ranges != want:
                problems.append(f"{tensor.name} takes {ranges}, expected {want}")
        elif list(array.shape) != _expected(tensor.shape, batch):
            problems.append(f"{tensor.name} is {list(array.shape)}, expected "
                            f"{_expected(tensor.shape, batch)}")
    return problems


def _precision_problems(main: Any, precision: str) -> tuple[list[str], list[str]]:
    """(FP32 compute ops, misplaced casts). In an FP16 program only the casts of the FP32
    inputs and to the FP32 outputs may touch FP32."""
    from coremltools.converters.mil.mil import types

    inputs = set(main.inputs.values())
    outputs = {v.name for v in main.outputs}
    fp32_ops, casts = [], []
    for op in main.operations:
        if op.op_type == "const":
            continue
        float_outs = [v for v in op.outputs if types.is_tensor(v.sym_type) or types.is_scalar(v.sym_type)]
        dtypes = {v.dtype for v in float_outs}
        if op.op_type == "cast":
            source = op.x
            into_fp16 = source in inputs and dtypes == {types.fp16}
            out_fp32 = op.outputs[0].name in outputs and dtypes == {types.fp32}
            if precision == "fp16" and not (into_fp16 or out_fp32):
                casts.append(f"{op.name} ({types.builtin_to_string(source.dtype)} -> "
                             f"{types.builtin_to_string(op.outputs[0].dtype)})")
            if precision == "fp32":
                casts.append(op.name)
            continue
        wanted = types.fp16 if precision == "fp16" else types.fp32
        if any(d in (types.fp16, types.fp32) and d != wanted for d in dtypes):
            fp32_ops.append(f"{op.op_type} {op.name}")
    return fp32_ops, casts


def check_coreml(path: Path, ops: OpList, precision: str, batch: int | None = None) -> CoreMLCheck:
    """Reloads the package at ``path`` and compares it with ``ops`` (what it was built from)."""
    from katapool.models.coreml_replay import load_program

    ct = import_coremltools()
    result = CoreMLCheck()
    path = Path(path)
    try:
        with quiet():
            model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
        kind = spec.WhichOneof("Type")
        result.add("reload", kind == "mlProgram",
                   f"reloads as {kind} (specification version {spec.specificationVersion})")
        program = load_program(path)
    except Exception as exc:  # a package coremltools cannot read: say why, check nothing more
        result.add("reload", False, f"coremltools cannot read {path}: {exc}")
        return result
    main = program.functions["main"]

    names = [i.name for i in spec.description.input]
    want = [t.name for t in ops.inputs]
    problems = _input_problems(spec, ops, batch)
    batch_text = f"batch 1-{MAX_BATCH}" if batch is None else f"batch {batch}"
    result.add("inputs", names == want and not problems,
               f"{', '.join(names)} ({batch_text}, FP32)" if names == want and not problems
               else "; ".join([f"names {names}, expected {want}"] * (names != want) + problems))

    out_names = [o.name for o in spec.description.output]
    want_out = [t.name for t in ops.outputs]
    out_problems = [f"{o.name} is not FP32" for o in spec.description.output
                    if o.type.multiArrayType.dataType != o.type.multiArrayType.FLOAT32]
    program_outs = {v.name: v for v in main.outputs}
    for tensor in ops.outputs:
        var = program_outs.get(tensor.name)
        if var is None:
            out_problems.append(f"{tensor.name} is not an output of the program")
        elif _dims(var.shape) != _expected(tensor.shape, batch):
            out_problems.append(f"{tensor.name} is {_dims(var.shape)} in the program, expected "
                                f"{_expected(tensor.shape, batch)}")
    result.add("outputs", out_names == want_out and not out_problems,
               f"{len(out_names)} outputs, FP32, shapes as the ONNX export's"
               if out_names == want_out and not out_problems
               else "; ".join([f"names {out_names}, expected {want_out}"] * (out_names != want_out)
                              + out_problems))

    stored = dict(spec.description.metadata.userDefined)
    absent = [k for k, v in ops.metadata.items() if stored.get(k) != v]
    result.add("metadata", not absent, f"{len(ops.metadata)} fields of the ONNX export"
               if not absent else f"missing or different: {', '.join(absent)}")

    fp32_ops, casts = _precision_problems(main, precision)
    result.off_precision_ops = fp32_ops
    if precision == "fp16":
        detail = ("every compute op in FP16, FP32 only at the input and output casts"
                  if not fp32_ops and not casts
                  else f"FP32 compute ops: {fp32_ops[:8]}; other casts: {casts[:8]}")
    else:
        detail = ("every op in FP32" if not fp32_ops and not casts
                  else f"FP16 ops: {fp32_ops[:8]}; casts: {casts[:8]}")
    result.add("precision", not fp32_ops and not casts, detail)

    counts = Counter(op.op_type for op in main.operations)
    result.op_counts = dict(sorted(counts.items()))
    want_counts = ops.counts()
    convs, products = counts["conv"], counts["linear"] + counts["matmul"]
    ok = convs == want_counts.get("Conv", 0) and products == want_counts.get("MatMul", 0)
    result.add("ops", ok, f"{sum(counts.values()) - counts['const']} ops and {counts['const']} "
               f"constants; {convs} convolutions and {products} matrix products (op list: "
               f"{want_counts.get('Conv', 0)} and {want_counts.get('MatMul', 0)})")

    result.size_bytes = package_size(path)
    weights = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    result.add("package", weights.is_file() and (path / "Manifest.json").is_file(),
               f"{result.size_bytes / 1e6:.2f} MB (weights {weights.stat().st_size / 1e6:.2f} MB)"
               if weights.is_file() else "no weights/weight.bin in the package")
    return result
