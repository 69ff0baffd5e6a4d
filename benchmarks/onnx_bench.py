#!/usr/bin/env python3
"""ONNX Runtime CPU evaluations/s of katapool's exports beside KataGo's own `benchmarknn`
on the same machine and networks; prints Markdown rows for docs/models.md.

    .venv/bin/python benchmarks/onnx_bench.py [--batch 1 8] [--iterations 20]

Networks: the three in ../shared/models and the installed engine's bundled one (b10c384).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pool_bench import ROOT, katago_path, machine


def networks() -> list[Path]:
    from katapool.engine.discovery import resolve_model

    shared = sorted((ROOT.parent / "shared" / "models").glob("*.bin.gz"))
    return [*shared, resolve_model(None)]


def ort_rate(model_path: Path, batch: int, iterations: int) -> float:
    import onnxruntime as ort

    from katapool.models import load_model
    from katapool.models.export_onnx import export_onnx

    proto = export_onnx(load_model(model_path))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    spatial = (rng.random((batch, 22, 19, 19)) < 0.2).astype(np.float32)
    spatial[:, 0] = 1.0
    feeds = {"InputSpatial": spatial, "InputGlobal": np.zeros((batch, 19), dtype=np.float32)}
    for _ in range(3):
        session.run(None, feeds)
    began = time.perf_counter()
    for _ in range(iterations):
        session.run(None, feeds)
    return batch * iterations / (time.perf_counter() - began)


def katago_rate(model_path: Path, batch: int, iterations: int, cfg: Path) -> float:
    proc = subprocess.run([katago_path(), "benchmarknn", "-config", str(cfg), "-model", str(model_path),
                           "-batch-size", str(batch), "-iterations", str(iterations), "-warmup", "3",
                           "-json"], capture_output=True, text=True, timeout=3600)
    start = proc.stdout.find("{")
    if proc.returncode != 0 or start < 0:
        raise SystemExit(f"benchmarknn failed: {proc.stderr.strip().splitlines()[-1:]}")
    data = json.loads(proc.stdout[start:])
    return float(data["actualWallNNEvalsPerSec"])  # rows per second over the whole timed run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--iterations", type=int, default=20)
    args = ap.parse_args()
    cfg = Path(tempfile.mkdtemp(prefix="kp-onnx-bench-")) / "gtp.cfg"
    subprocess.run([sys.executable, "-m", "katapool", "config", "generate", "--mode", "gtp",
                    "-o", str(cfg)], check=True, capture_output=True)
    print(f"machine: {machine()}")
    print("| network | batch | ONNX Runtime CPU evals/s | KataGo benchmarknn evals/s (OpenCL/PoCL) |")
    print("|---|---|---|---|")
    for net in networks():
        for batch in args.batch:
            iterations = max(2, args.iterations // batch) if "b10" in net.name else args.iterations
            ours = ort_rate(net, batch, iterations)
            theirs = katago_rate(net, batch, iterations, cfg)
            print(f"| {net.name.removesuffix('.bin.gz')} | {batch} | {ours:.1f} | {theirs:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
