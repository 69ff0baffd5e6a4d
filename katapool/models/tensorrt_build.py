"""TensorRT engines (``.plan``) from katapool's ONNX exports, with the ``tensorrt`` Python package.

GPU machines only (``pip install 'katapool[tensorrt]'``). Written for TensorRT 10 and 11:

* explicit batch always (TensorRT 10 and later know nothing else; the old creation flag is only
  passed where the installed TensorRT still has it);
* one optimization profile: min batch 1, opt = max = ``max_batch`` (KataGo's
  ``nnMaxBatchSize``), every other dimension fixed at the file's own (board size and channels);
* precision follows the file. A file that already carries FP16 tensors or
  QuantizeLinear/DequantizeLinear nodes (``katapool model quantize``) is built as a *strongly
  typed* network, so its own choices (FP32 islands, Q/DQ) are kept: that is how INT8 engines
  are made, and the only way TensorRT 11 builds reduced precision at all. An FP32 file asked for
  FP16 uses the FP16 builder flag where the installed TensorRT still has it (10.x), else the
  user is told to quantize first. TF32 stays on, as in KataGo's own TensorRT backend, so an
  "FP32" engine differs from ONNX Runtime on the CPU at about 1e-3.

``load_and_run`` runs one batch through a plan (used to compare a plan with ONNX Runtime). Its
device memory comes from NVIDIA's ``cuda-python`` runtime bindings, which the ``tensorrt`` extra
installs; no other CUDA binding is needed.
"""

from __future__ import annotations

import glob
import importlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from katapool.errors import ConfigError, KatapoolError, ModelError

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")

NOT_INSTALLED = "the tensorrt Python package is not installed (pip install 'katapool[tensorrt]')"
MIN_MAJOR = 10

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


class TensorRTUnavailableError(KatapoolError):
    """TensorRT cannot be used on this machine (no package, no GPU, no driver): nothing to fix in
    the command itself, so it exits 2 like a usage error."""

    exit_code = 2


@dataclass(frozen=True)
class BuildResult:
    seconds: float  # parsing and building, what the user waited for
    size_bytes: int
    precision: Precision
    max_batch: int
    tensorrt_version: str
    strongly_typed: bool
    inputs: dict[str, list[int]] = field(default_factory=dict)  # the profile's max shapes


# --- availability -------------------------------------------------------------------------------

def tensorrt_status() -> str | None:
    """None when TensorRT can build engines here, else why not, in plain words."""
    try:
        trt = importlib.import_module("tensorrt")
    except ModuleNotFoundError as exc:
        if exc.name == "tensorrt":
            return NOT_INSTALLED
        return f"the tensorrt Python package does not load: {exc}"
    except Exception as exc:  # a wheel without its libraries, a missing libnvinfer, ...
        return f"the tensorrt Python package does not load: {exc}"
    version = str(getattr(trt, "__version__", "unknown"))
    if _major(version) < MIN_MAJOR:
        return f"TensorRT {version} is too old (katapool needs {MIN_MAJOR} or newer)"
    missing = _gpu_missing_reason()
    if missing:
        return missing
    # The GPU is there; whether this TensorRT can reach it through the driver only TensorRT knows.
    logger = make_logger(trt)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # pybind11 turns a null builder into TypeError
        return f"TensorRT {version} cannot use the GPU: {logger.said() or exc}"
    if builder is None:
        return f"TensorRT {version} cannot use the GPU: {logger.said() or 'no builder'}"
    del builder
    return None


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def _gpu_missing_reason() -> str | None:
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return f"no NVIDIA GPU visible (CUDA_VISIBLE_DEVICES={hidden!r} hides them)"
    from katapool.devices.nvidia import list_nvidia_gpus

    gpus, why = list_nvidia_gpus()
    if gpus or _device_nodes():
        return None
    return f"no NVIDIA GPU visible (no /dev/nvidia* device; {why or 'none listed'})"


def _device_nodes() -> list[str]:
    return glob.glob("/dev/nvidia[0-9]*")


def _import_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError):
        raise TensorRTUnavailableError(tensorrt_status() or NOT_INSTALLED) from None


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps what TensorRT says, so errors reach the user in its words."""

    class _Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            sev = trt.ILogger.Severity
            if severity in (sev.ERROR, sev.INTERNAL_ERROR):
                self.errors.append(str(msg).strip())
            elif severity == sev.WARNING:
                self.warnings.append(str(msg).strip())

        def said(self) -> str:
            return "; ".join(self.errors[-5:])

    return _Logger()


# --- what the file asks for ---------------------------------------------------------------------

def onnx_precision(onnx_path: str | os.PathLike[str]) -> Precision:
    """``int8`` for a file with Q/DQ nodes, ``fp16`` for one with FP16 tensors, else ``fp32``."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from None
    fp16 = onnx.TensorProto.FLOAT16
    uint8 = [t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    if uint8:
        raise ModelError(f"{path} quantizes activations to unsigned INT8 (zero point "
                         f"{uint8[0]}): TensorRT takes symmetric signed INT8 only; quantize again "
                         "with `katapool model quantize --int8 --activations int8`")
    has_fp16 = False
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            if node.op_type in _QDQ_OPS:
                return "int8"
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == fp16:
                    has_fp16 = True
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
        if any(t.data_type == fp16 for t in graph.initializer):
            has_fp16 = True
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.tensor_type.elem_type == fp16:
                has_fp16 = True
    for function in proto.functions:
        if any(n.op_type in _QDQ_OPS for n in function.node):
            return "int8"
    return "fp16" if has_fp16 else "fp32"


@dataclass(frozen=True)
class BuildPlan:
    precision: Precision
    strongly_typed: bool  # the file's own types decide (no precision builder flag)
    fp16_flag: bool  # weakly typed FP32 network with BuilderFlag.FP16 (TensorRT 10)


def plan_build(name: str, in_file: Precision, requested: Precision | None,
               weak_fp16: Callable[[], str | None]) -> BuildPlan:
    """How to build ``name`` (a file whose precision is ``in_file``) for ``requested``.
    ``weak_fp16()`` is None when the installed TensorRT still has BuilderFlag.FP16, else the
    TensorRT version that lacks it (only asked when it matters)."""
    want = requested or in_file
    if want == "int8" and in_file != "int8":
        raise ModelError(f"{name} has no QuantizeLinear/DequantizeLinear nodes: an INT8 engine is "
                         "built from a quantized model; run `katapool model quantize --int8` first "
                         "and build its output")
    if want == "fp16" and in_file == "int8":
        raise ModelError(f"{name} is an INT8 (Q/DQ) model: build it with --int8, or without a "
                         "precision flag")
    if want == "fp32" and in_file != "fp32":
        raise ModelError(f"{name} already carries {in_file.upper()} precision: an FP32 engine is "
                         "built from the FP32 export (katapool model export-onnx)")
    if want == "fp16" and in_file == "fp32":
        lacking = weak_fp16()
        if lacking is not None:
            raise ModelError(f"{name} is an FP32 model and TensorRT {lacking} has no FP16 builder "
                             "flag (it builds strongly typed networks only): run `katapool model "
                             "quantize --fp16` first and build its output")
        return BuildPlan("fp16", strongly_typed=False, fp16_flag=True)
    return BuildPlan(want, strongly_typed=True, fp16_flag=False)


# --- building -----------------------------------------------------------------------------------

def build_engine(onnx_path: str | os.PathLike[str], output: str | os.PathLike[str],
                 precision: Precision | None = None, max_batch: int = 16,
                 workspace_mib: int | None = None) -> BuildResult:
    """Build and write a serialized engine for batches 1..``max_batch``; ``precision`` None
    follows the file."""
    src, dst = Path(onnx_path), Path(output)
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if max_batch < 1:
        raise ConfigError(f"max batch must be at least 1 (got {max_batch})")
    if workspace_mib is not None and workspace_mib < 1:
        raise ConfigError(f"workspace must be at least 1 MiB (got {workspace_mib})")
    in_file = onnx_precision(src)
    trt: Any = None

    def weak_fp16() -> str | None:
        nonlocal trt
        trt = trt or _import_tensorrt()
        return None if hasattr(trt.BuilderFlag, "FP16") else str(trt.__version__)

    plan = plan_build(src.name, in_file, precision, weak_fp16)
    trt = trt or _import_tensorrt()
    version = str(trt.__version__)
    logger = make_logger(trt)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:
        raise TensorRTUnavailableError(
            f"TensorRT {version} cannot use the GPU: {logger.said() or exc}") from None
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None:  # TensorRT 10 keeps it (ignored: explicit batch is the only mode)
        flags |= 1 << int(explicit)
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if plan.strongly_typed and strongly is not None:
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)

    began = time.perf_counter()
    if not parser.parse_from_file(str(src)):
        said = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        raise ModelError(f"TensorRT's ONNX parser rejected {src}: "
                         + ("; ".join(said) or logger.said() or "no reason given"))

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    inputs: dict[str, list[int]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = [int(d) for d in tensor.shape]
        if not shape or shape[0] != -1:
            raise ModelError(f"{src.name}: input {tensor.name} has shape {shape}, without a "
                             "dynamic batch dimension first (katapool model export-onnx writes one)")
        if any(d < 0 for d in shape[1:]):
            raise ModelError(f"{src.name}: input {tensor.name} has shape {shape}: only the batch "
                             "may be dynamic (export for one board size)")
        rest = shape[1:]
        profile.set_shape(tensor.name, (1, *rest), (max_batch, *rest), (max_batch, *rest))
        inputs[tensor.name] = [max_batch, *rest]
    if config.add_optimization_profile(profile) < 0:
        raise ModelError(f"TensorRT rejected the optimization profile for {src.name}: "
                         f"{logger.said() or inputs}")
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)

    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - began
    if serialized is None:
        raise ModelError(f"TensorRT could not build an engine from {src.name}: "
                         f"{logger.said() or 'it gave no reason'}")
    data = memoryview(serialized).cast("B")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return BuildResult(seconds=seconds, size_bytes=dst.stat().st_size, precision=plan.precision,
                       max_batch=max_batch, tensorrt_version=version,
                       strongly_typed=plan.strongly_typed, inputs=inputs)


# --- running ------------------------------------------------------------------------------------

def _cudart() -> Any:
    """NVIDIA's cuda-python runtime bindings (``cuda.bindings.runtime`` since 12.6, the older
    ``cuda.cudart`` before)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TensorRTUnavailableError("running an engine needs the cuda-python package "
                                   "(pip install 'katapool[tensorrt]')")


def _check(cudart: Any, result: Any, what: str) -> Any:
    """cuda-python returns (error, value...) tuples; raise on an error, else the value."""
    status = result[0] if isinstance(result, tuple) else result
    if status != cudart.cudaError_t.cudaSuccess:
        described = cudart.cudaGetErrorString(status)
        text = described[1] if isinstance(described, tuple) else described
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise ModelError(f"CUDA {what} failed: {text}")
    if isinstance(result, tuple) and len(result) > 1:
        return result[1]
    return None


class PlanRunner:
    """A deserialized plan with host and device buffers for one batch shape, made once; each
    ``run()`` copies the inputs in, executes, synchronizes and copies the outputs back. Use it
    as a context manager (the GPU memory is freed on exit)."""

    def __init__(self, plan_path: str | os.PathLike[str], feeds: Mapping[str, np.ndarray]) -> None:
        trt = _import_tensorrt()
        self.cudart = cudart = _cudart()
        self.path = path = Path(plan_path)
        self.logger = logger = make_logger(trt)
        engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ModelError(f"TensorRT cannot load {path}: {logger.said() or 'no reason given'}")
        context = engine.create_execution_context()
        if context is None:
            raise ModelError(f"TensorRT cannot run {path}: "
                             f"{logger.said() or 'no execution context'}")
        self.context = context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if set(feeds) != set(self.inputs):
            raise ModelError(f"{path.name} takes {sorted(self.inputs)}; given {sorted(feeds)}")
        self.host: dict[str, np.ndarray] = {}
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name],
                                         dtype=trt.nptype(engine.get_tensor_dtype(name)))
            if not context.set_input_shape(name, tuple(array.shape)):
                allowed = engine.get_tensor_profile_shape(name, 0)
                raise ModelError(f"{path.name}: input {name} of shape {list(array.shape)} is "
                                 f"outside the engine's profile (min, opt, max = "
                                 f"{[list(s) for s in allowed]})")
            self.host[name] = array
        for name in self.outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelError(f"{path.name}: output {name} has no definite shape "
                                 f"({list(shape)})")
            self.host[name] = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
        self.batch = int(self.host[self.inputs[0]].shape[0]) if self.inputs else 0
        self.device: dict[str, int] = {}
        self.stream: Any = None
        try:
            for name, array in self.host.items():
                self.device[name] = int(_check(cudart, cudart.cudaMalloc(max(array.nbytes, 1)),
                                               f"allocation for {name}"))
                context.set_tensor_address(name, self.device[name])
            self.stream = _check(cudart, cudart.cudaStreamCreate(), "stream creation")
        except BaseException:
            self.close()
            raise

    def run(self) -> dict[str, np.ndarray]:
        cudart, host, device = self.cudart, self.host, self.device
        for name in self.inputs:
            _check(cudart, cudart.cudaMemcpy(device[name], host[name].ctypes.data,
                                             host[name].nbytes,
                                             cudart.cudaMemcpyKind.cudaMemcpyHostToDevice),
                   f"copy of {name}")
        if not self.context.execute_async_v3(int(self.stream)):
            raise ModelError(f"TensorRT could not run {self.path.name}: "
                             f"{self.logger.said() or 'no reason given'}")
        _check(cudart, cudart.cudaStreamSynchronize(self.stream), "inference")
        for name in self.outputs:
            _check(cudart, cudart.cudaMemcpy(host[name].ctypes.data, device[name],
                                             host[name].nbytes,
                                             cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost),
                   f"copy of {name}")
        return {name: host[name] for name in self.outputs}

    def close(self) -> None:
        for pointer in self.device.values():
            self.cudart.cudaFree(pointer)
        self.device = {}
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __enter__(self) -> PlanRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_and_run(plan_path: str | os.PathLike[str],
                 feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Deserialize a plan, run one batch of ``feeds`` (input name -> array) and return every
    output by name, in the engine's own dtypes."""
    with PlanRunner(plan_path, feeds) as runner:
        return {name: value.copy() for name, value in runner.run().items()}
