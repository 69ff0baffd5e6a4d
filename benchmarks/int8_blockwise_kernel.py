#!/usr/bin/env python3
"""One matrix product, FP32 against ONNX Runtime's block-wise MatMulNBits, at the shapes
KataGo's transformer networks use (rows = 8 positions x 361 points): is the block-wise integer
kernel faster than FP32 on this CPU?

    .venv/bin/python benchmarks/int8_blockwise_kernel.py [--rows 2888] [--seconds 1]

Prints, per shape, milliseconds per product and the speed over FP32 (paired: run in turn) for
8-bit weights per 32 inputs at accuracy level 4 (activations quantized to INT8 per row and block: an integer
product) and level 0 (FP32 arithmetic on the 8-bit weights), and for one scale per row only,
built from standard operators (QuantizeLinear per row, MatMulInteger, the scales applied to its
int32 result: ONNX Runtime takes no per-row zero point, so rows are symmetric around 128), with
the largest output error relative to the largest output. Activations are ReLU-like, with one
channel 12x the others.
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


def per_row(k: int, n: int, w: np.ndarray, rows: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    wscale = np.abs(w).max(0) / 127
    wq = (np.round(w / wscale) + 128).astype(np.uint8)
    nodes = [
        helper.make_node("Abs", ["a"], ["abs"]),
        helper.make_node("ReduceMax", ["abs", "last"], ["top"], keepdims=1),
        helper.make_node("Div", ["top", "c127"], ["s0"]),
        helper.make_node("Max", ["s0", "tiny"], ["s"]),
        helper.make_node("Reshape", ["s", "flat"], ["s1"]),
        helper.make_node("QuantizeLinear", ["a", "s1", "zrows"], ["aq"], axis=0),
        helper.make_node("MatMulInteger", ["aq", "wq", "z", "z"], ["yi"]),
        helper.make_node("Cast", ["yi"], ["yf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["yf", "s"], ["y1"]),
        helper.make_node("Mul", ["y1", "wscale"], ["y"])]
    consts = {"last": np.array([-1], np.int64), "flat": np.array([-1], np.int64),
              "c127": np.array(127, np.float32), "tiny": np.array(1e-12, np.float32),
              "zrows": np.full(rows, 128, np.uint8), "z": np.array(128, np.uint8), "wq": wq,
              "wscale": wscale.astype(np.float32)}
    graph = helper.make_graph(
        nodes, "rows", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        [numpy_helper.from_array(v, name) for name, v in consts.items()])
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                 .SerializeToString())


def sessions(models: list[bytes]) -> list[Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # run in turn, a session's idle threads must not spin on the cores the next one needs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return [ort.InferenceSession(m, options, providers=["CPUExecutionProvider"]) for m in models]


def paired(runs: list[Any], a: np.ndarray, seconds: float) -> tuple[list[float], list[float]]:
    """Milliseconds of each session and its speed over the first (FP32), all run in turn, so the
    load of a shared machine falls on each alike: medians of the times and of the ratios."""
    times: list[list[float]] = [[] for _ in runs]
    began = time.perf_counter()
    while len(times[0]) < 10 or time.perf_counter() - began < seconds:
        for sess, kept in zip(runs, times, strict=True):
            t0 = time.perf_counter()
            sess.run(None, {"a": a})
            kept.append(time.perf_counter() - t0)
    ratios = [statistics.median(f / o for f, o in zip(times[0], t, strict=True)) for t in times]
    return [statistics.median(t) * 1e3 for t in times], ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8 * 361)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print("| K × N | FP32 ms | level 4 ms (× FP32 speed) | error | level 0 ms (× FP32 speed) "
          "| error | per row ms (× FP32 speed) | error |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for k, n in SHAPES:
        w = rng.standard_normal((k, n)).astype(np.float32)
        a = np.maximum(rng.standard_normal((args.rows, k)), 0).astype(np.float32)
        a[:, 3] *= 12
        proto = product(k, n, w)
        runs = sessions([proto.SerializeToString(), blockwise(proto, ["mm"], 8, 32, 4),
                         blockwise(proto, ["mm"], 8, 32, 0), per_row(k, n, w, args.rows)])
        outs = [r.run(None, {"a": a})[0] for r in runs]
        ms, ratios = paired(runs, a, args.seconds)
        cells = [f"{k} × {n}", f"{ms[0]:.2f}"]
        for i in (1, 2, 3):
            err = np.abs(outs[i] - outs[0]).max() / np.abs(outs[0]).max()
            cells += [f"{ms[i]:.2f} ({ratios[i]:.2f}×)", f"{err:.1e}"]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
