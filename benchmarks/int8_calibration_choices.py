#!/usr/bin/env python3
"""Which calibration choices help INT8 stay within KataGo's FP16 limits: activation ranges by
percentile (three levels), entropy, min/max and least squared error (MSE); calibration with
the 8 symmetries or without; 32 or 96 calibration positions; signed or unsigned activations.
For each choice: the whole trunk INT8 and the mixed-precision search (int8_mixed), both
judged on held-out positions.

    .venv/bin/python benchmarks/int8_calibration_choices.py --net NET [--budget 0.8]
        [--cache DIR] [--json OUT.json]

Uses the engine reference int8_mixed_report.py keeps in --cache (made there if missing).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from int8_mixed_report import SHORT, reference
from pool_bench import machine

CHOICES: list[dict[str, Any]] = [
    {"label": "percentile 99.999, 8 symmetries, 96 positions"},
    {"label": "percentile 99.99", "percentile": 99.99},
    {"label": "percentile 99.9", "percentile": 99.9},
    {"label": "entropy", "method": "entropy"},
    {"label": "min/max", "method": "minmax"},
    {"label": "MSE", "method": "mse"},
    {"label": "MSE, u8 activations, 7-bit weights", "method": "mse", "activations": "uint8",
     "reduce_range": True},
    {"label": "no symmetries", "symmetries": False},
    {"label": "32 positions", "positions": 32},
    {"label": "u8 activations", "activations": "uint8"},
    {"label": "u8 activations, 7-bit weights", "activations": "uint8", "reduce_range": True},
]


def main() -> None:
    from katapool.models import load_model
    from katapool.models.export_onnx import export_onnx
    from katapool.models.int8_mixed import (
        MixedSearch,
        cpu_session,
        limit_ratio,
        search,
    )
    from katapool.models.precision_check import feeds_from_samples
    from katapool.models.quantize import Int8Options, to_int8
    from katapool.models.speed import ort_speed
    from katapool.models.validate import FP16_LIMITS, compare, feeds_for, onnx_session, session_evals

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=0.8)
    ap.add_argument("--only", nargs="*", help="labels to run (default: all)")
    ap.add_argument("--bench-seconds", type=float, default=4.0)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kp-mixed-ref")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    model = load_model(args.net)
    data = reference(args.net, 200, 96, args.cache)
    fp32 = export_onnx(model)
    fp32_bytes = fp32.SerializeToString()
    engine = [s.engine for s in data["validation"]]
    fp32_speed = ort_speed(fp32_bytes, 8, args.bench_seconds).evals_per_second
    rows = []
    for choice in CHOICES:
        if args.only and choice["label"] not in args.only:
            continue
        selection = data["calibration"][:choice.get("positions", 96)]
        if choice.get("symmetries", True):
            feeds = feeds_from_samples(model, fp32_bytes, selection)
        else:
            session = onnx_session(fp32_bytes)
            feeds = [feeds_for(session, model, s.spatial, s.global_) for s in selection]
        options = Int8Options(choice.get("method", "percentile"),
                              choice.get("percentile", 99.999),
                              activations=choice.get("activations", "int8"),
                              reduce_range=choice.get("reduce_range", False))
        began = time.perf_counter()
        whole = to_int8(fp32, feeds, options)
        whole_ratio = limit_ratio(compare(session_evals(
            model, cpu_session(whole.SerializeToString()), data["validation"], batch=16), engine,
            FP16_LIMITS))
        result = search(MixedSearch(model, fp32, feeds, selection, options, budget=args.budget))
        chosen = result.proto.SerializeToString()
        checked = compare(session_evals(model, cpu_session(chosen), data["validation"], batch=16),
                          engine, FP16_LIMITS)
        speed = ort_speed(chosen, 8, args.bench_seconds).evals_per_second
        row = {"network": model.name, "choice": choice["label"], "whole_ratio": whole_ratio,
               "int8_nodes": len(result.chosen), "candidates": result.candidates,
               "mixed_ratio": limit_ratio(checked), "speed_ratio": speed / fp32_speed,
               "seconds": time.perf_counter() - began}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    print(f"\n{SHORT.get(model.name, model.name)}, budget {args.budget:g}x KataGo's FP16 limits, "
          "errors on 200 held-out positions as a multiple of those limits:\n")
    print("| calibration | whole trunk INT8: × limits | mixed: INT8 nodes | mixed: × limits "
          "| mixed: speed / FP32 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['choice']} | {r['whole_ratio']:.1f} | {r['int8_nodes']} / {r['candidates']} "
              f"| {r['mixed_ratio']:.2f} | {r['speed_ratio']:.2f}× |")


if __name__ == "__main__":
    main()
