#!/usr/bin/env python3
"""One matrix product, FP32 against ONNX Runtime's block-wise MatMulNBits, at the shapes
KataGo's transformer networks use (rows = 8 positions x 361 points): is the block-wise integer
kernel faster than FP32 on this CPU?

    .venv/bin/python benchmarks/int8_blockwise_kernel.py [--rows 2888] [--seconds 1]

Prints, per shape, milliseconds per product and the ratio to FP32 for 8-bit weights per 32
inputs at accuracy level 4 (activations quantized to INT8 per row and block: an integer
product) and level 0 (FP32 arithmetic on the 8-bit weights), with the largest output error
relative to the largest output. Activations are ReLU-like, with one channel 12x the others.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
from int8_dynamic import blockwise
from pool_bench import machine

SHAPES = [(96, 96), (96, 288), (384, 384), (384, 1536), (1536, 384)]


def product(k: int, n: int, w: np.ndarray) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"], name="mm")], "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def per_run(onnx_bytes: bytes, a: np.ndarray, seconds: float) -> tuple[float, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"a": a})[0]
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < 10 or time.perf_counter() - began < seconds:
        t0 = time.perf_counter()
        sess.run(None, {"a": a})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8 * 361)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print("| K × N | FP32 ms | level 4 ms (× FP32 speed) | error | level 0 ms (× FP32 speed) | error |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for k, n in SHAPES:
        w = rng.standard_normal((k, n)).astype(np.float32)
        a = np.maximum(rng.standard_normal((args.rows, k)), 0).astype(np.float32)
        a[:, 3] *= 12
        proto = product(k, n, w)
        base, ref = per_run(proto.SerializeToString(), a, args.seconds)
        cells = [f"{k} × {n}", f"{base:.2f}"]
        for level in (4, 0):
            ms, out = per_run(blockwise(proto, ["mm"], 8, 32, level), a, args.seconds)
            cells += [f"{ms:.2f} ({base / ms:.2f}×)",
                      f"{np.abs(out - ref).max() / np.abs(ref).max():.1e}"]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
