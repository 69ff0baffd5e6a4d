#!/usr/bin/env python3
"""Why INT8 is (or is not) faster than FP32 on ONNX Runtime's CPU provider, and which parts of
a network INT8 hurts most; prints the Markdown tables of docs/quantization.md.

    .venv/bin/python benchmarks/int8_investigation.py [--net NET] [--positions 64] [--seconds 10]

1. Speed: FP32 and INT8 with signed symmetric activations (s8, what TensorRT takes) and with
   unsigned asymmetric ones (u8), batch 1 and 8, with the number of convolutions and matrix
   products ONNX Runtime fused into integer kernels (QLinearConv, QLinearMatMul) and how many
   stayed float behind DequantizeLinear.
2. Sensitivity: INT8 with one kind of layer left in FP32 at a time, compared with the FP32
   export on real positions (input tensors from the engine, half of them for calibration and
   the other half for the comparison): policy KL and winrate difference.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pool_bench import ROOT, machine


def fused_counts(onnx_bytes: bytes) -> dict[str, int]:
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in
                                  onnx.load(options.optimized_model_filepath).graph.node)
    return {"integer": ops["QLinearConv"] + ops["QLinearMatMul"],
            "float": ops["Conv"] + ops["MatMul"] + ops["FusedConv"] + ops["FusedMatMul"],
            "dequantize": ops["DequantizeLinear"]}


def real_feeds(net: Path, count: int) -> list[dict[str, np.ndarray]]:
    from katapool.config.build import build_config
    from katapool.config.settings import Mode
    from katapool.engine.discovery import resolve_engine
    from katapool.engine.probe import probe_version
    from katapool.models.validate import engine_inputs, sample_positions, with_explicit_rules

    info = probe_version(resolve_engine(None).path)
    g170 = ROOT.parent / "shared" / "models" / "g170-b6c96-s175395328-d26788732.bin.gz"
    games = sorted((ROOT.parent / "shared").glob("sgf/*/*.sgf"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gtp.cfg"
        cfg.write_text(build_config(mode=Mode.GTP, info=info, model=g170, preset="desktop").text)
        feeds = []
        for pos in sample_positions(with_explicit_rules(games, Path(tmp)), count, seed=3):
            spatial, global_ = engine_inputs(info.path, cfg, g170, pos, Path(tmp))
            feeds.append({"InputSpatial": spatial, "InputGlobal": global_})
    return feeds


def weights_only(proto: Any, excluded: list[str]) -> Any:
    """The FP32 graph with the INT8 layers' weights rounded as INT8 would store them
    (symmetric, one scale per output channel) and every activation left in FP32."""
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    inits = {i.name: i for i in copy.graph.initializer}
    for node in copy.graph.node:
        if node.op_type not in ("Conv", "MatMul") or node.name in excluded:
            continue
        for name in node.input:
            if name not in inits:
                continue
            w = numpy_helper.to_array(inits[name])
            axis = 0 if node.op_type == "Conv" else w.ndim - 1  # output channels
            other = tuple(i for i in range(w.ndim) if i != axis)
            scale = np.maximum(np.abs(w).max(axis=other, keepdims=True), 1e-12) / 127.0
            rounded = (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)
            inits[name].CopyFrom(numpy_helper.from_array(rounded, name))
    return copy


def gaps(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]]) -> tuple[float, float]:
    """Median policy KL (all moves) and median winrate difference against FP32."""
    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max())
        return np.asarray(e / e.sum())

    kl, winrate = [], []
    for a, b in zip(reference, outputs, strict=True):
        pa = softmax(np.append(a[1][0, 0].ravel(), a[0][0, 0]))
        pb = softmax(np.append(b[1][0, 0].ravel(), b[0][0, 0]))
        kl.append(float(np.sum(pa * (np.log(pa + 1e-12) - np.log(pb + 1e-12)))))
        winrate.append(abs(float(softmax(a[2][0])[0] - softmax(b[2][0])[0])))
    return float(np.median(kl)), float(np.median(winrate))


def main() -> None:
    import onnxruntime as ort

    from katapool.engine.discovery import resolve_model
    from katapool.models import load_model, quantize
    from katapool.models.export_onnx import export_onnx
    from katapool.models.speed import ort_speed

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", type=Path)
    ap.add_argument("--positions", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    net = args.net or resolve_model(None)
    fp32 = export_onnx(load_model(net))
    feeds = real_feeds(net, args.positions)
    calibration, checked = feeds[0::2], feeds[1::2]
    print(f"machine: {machine()}; ONNX Runtime {ort.__version__}; {net.name}", flush=True)

    print("\n| model | integer kernels | float Conv/MatMul | DequantizeLinear left | size MB | "
          "evals/s batch 1 | evals/s batch 8 |")
    print("|---|---|---|---|---|---|---|")
    models: dict[str, Any] = {"FP32": fp32}
    for acts, label in (("int8", "INT8 s8 (symmetric)"), ("uint8", "INT8 u8 (asymmetric)")):
        models[label] = quantize.to_int8(fp32, calibration, quantize.Int8Options(activations=acts))
    for label, proto in models.items():
        data = proto.SerializeToString()
        counts = fused_counts(data)
        rates = [ort_speed(data, batch, args.seconds).evals_per_second for batch in (1, 8)]
        print(f"| {label} | {counts['integer']} | {counts['float']} | {counts['dequantize']} | "
              f"{len(data) / 1e6:.1f} | {rates[0]:.1f} | {rates[1]:.1f} |", flush=True)

    def run(proto: Any) -> list[list[np.ndarray]]:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return [session.run(None, f) for f in checked]

    reference = run(fp32)
    base = quantize.int8_excluded_nodes(fp32)
    layers = [n.name for n in fp32.graph.node if n.op_type in ("Conv", "MatMul")]
    kinds = {"nothing (all trunk layers INT8)": lambda n: False,
             "attention projections": lambda n: "/attn/" in n,
             "feed-forward layers": lambda n: "/ffn/" in n,
             "convolutions": lambda n: "/attn/" not in n and "/ffn/" not in n}
    print(f"\n{len(checked)} positions compared with the FP32 export, {len(calibration)} calibration "
          "positions (percentile 99.999)")
    print("\n| kept in FP32 | activations | policy KL (median) | winrate difference (median) |")
    print("|---|---|---|---|")
    kl, winrate = gaps(reference, run(weights_only(fp32, base)))
    print(f"| all activations (INT8 weights only) | FP32 | {kl:.4f} | {winrate:.4f} |", flush=True)
    for acts in ("int8", "uint8"):
        for label, keep in kinds.items():
            excluded = base + [n for n in layers if keep(n)]
            q = quantize.to_int8(fp32, calibration, quantize.Int8Options(activations=acts),
                                 exclude=excluded)
            kl, winrate = gaps(reference, run(q))
            print(f"| {label} | {'s8' if acts == 'int8' else 'u8'} | {kl:.4f} | {winrate:.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
