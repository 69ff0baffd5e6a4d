"""Evaluations per second of a TensorRT plan: deserialized and given its buffers once, then
batch after batch, each with its copies to and from the GPU (as KataGo's benchmarknn counts).

GPU machines only; the plan comes from ``katapool.models.tensorrt_build.build_engine``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from katapool.errors import ModelError
from katapool.models.tensorrt_build import TensorRTUnavailableError, make_logger


def _runtime_bindings() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (12.6 on), ``cuda.cudart`` before."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TensorRTUnavailableError("timing a TensorRT plan needs the cuda-python package "
                                   "(pip install 'katapool[tensorrt]')")


class _Cuda:
    """The few runtime calls the timing loop makes; cuda-python answers (error, value...)."""

    def __init__(self) -> None:
        self.rt = _runtime_bindings()

    def call(self, what: str, result: Any) -> Any:
        status = result[0] if isinstance(result, tuple) else result
        if status != self.rt.cudaError_t.cudaSuccess:
            raise ModelError(f"CUDA {what} failed: {status}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None


def plan_speed(plan_path: str | Path, feeds: Mapping[str, np.ndarray], seconds: float,
               warmup: int = 3) -> tuple[float, int]:
    """(evaluations per second, batches run) for ``feeds`` (one batch) through the plan."""
    trt = importlib.import_module("tensorrt")
    cuda = _Cuda()
    rt = cuda.rt
    logger = make_logger(trt)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise ModelError(f"TensorRT cannot load {plan_path}: {logger.said() or 'no reason given'}")
    context = engine.create_execution_context()
    if context is None:
        raise ModelError(f"TensorRT cannot run {plan_path}: {logger.said() or 'no context'}")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    host: dict[str, np.ndarray] = {}
    for name in inputs:
        array = np.ascontiguousarray(feeds[name], dtype=trt.nptype(engine.get_tensor_dtype(name)))
        if not context.set_input_shape(name, tuple(array.shape)):
            raise ModelError(f"{plan_path}: input {name} {list(array.shape)} is outside the "
                             "plan's batch range")
        host[name] = array
    for name in outputs:
        shape = tuple(int(d) for d in context.get_tensor_shape(name))
        host[name] = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
    batch = int(next(iter(host[n] for n in inputs)).shape[0])
    device: dict[str, int] = {}
    stream = None
    up = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    down = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    try:
        for name, array in host.items():
            device[name] = int(cuda.call(f"allocation for {name}", rt.cudaMalloc(max(array.nbytes, 1))))
            context.set_tensor_address(name, device[name])
        stream = cuda.call("stream creation", rt.cudaStreamCreate())

        def one_batch() -> None:
            for name in inputs:
                cuda.call("copy", rt.cudaMemcpy(device[name], host[name].ctypes.data,
                                                host[name].nbytes, up))
            if not context.execute_async_v3(int(stream)):
                raise ModelError(f"TensorRT could not run {plan_path}: "
                                 f"{logger.said() or 'no reason given'}")
            cuda.call("inference", rt.cudaStreamSynchronize(stream))
            for name in outputs:
                cuda.call("copy", rt.cudaMemcpy(host[name].ctypes.data, device[name],
                                                host[name].nbytes, down))

        for _ in range(warmup):
            one_batch()
        runs = 0
        began = time.perf_counter()
        while runs < 3 or time.perf_counter() - began < seconds:
            one_batch()
            runs += 1
        elapsed = time.perf_counter() - began
    finally:
        for pointer in device.values():
            rt.cudaFree(pointer)
        if stream is not None:
            rt.cudaStreamDestroy(stream)
    return batch * runs / elapsed, runs
