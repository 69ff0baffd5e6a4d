#!/usr/bin/env python3
"""TFLite (LiteRT) exports of each network against the engine, with file sizes and LiteRT CPU
speed; prints the Markdown tables of docs/models.md ("Phones and Macs").

    .venv/bin/python benchmarks/mobile_report.py [--positions 100] [--calibration 64]
        [--nets NET...] [--bench-seconds 5] [--json OUT.json]

Per network the engine's reference (inputs and `kata-raw-nn` outputs) on held-out positions of
the shared games is made once and compared with the FP32, FP16 and INT8 TFLite files in the
LiteRT interpreter: FP32 against KataGo's FP32 limits, FP16 and INT8 against its FP16 limits
(what `katapool model export-tflite` checks). INT8 calibration positions come from the same
games and never coincide with the checked ones. ONNX Runtime FP32 speed is measured beside.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from pool_bench import ROOT, machine

SHARED = ROOT.parent / "shared"
G170 = SHARED / "models" / "g170-b6c96-s175395328-d26788732.bin.gz"


def networks() -> list[Path]:
    from katapool.engine.discovery import resolve_model

    return [*sorted((SHARED / "models").glob("*.bin.gz")), resolve_model(None)]


def main() -> None:
    from katapool.config.build import build_config
    from katapool.config.settings import Mode
    from katapool.engine.discovery import resolve_engine
    from katapool.engine.probe import probe_version
    from katapool.models import load_model
    from katapool.models.export_onnx import export_onnx
    from katapool.models.export_tflite import write_tflite
    from katapool.models.litert import LiteRTSession, litert_speed
    from katapool.models.oplist import from_onnx
    from katapool.models.precision_check import calibration_feeds, split_positions
    from katapool.models.speed import ort_speed
    from katapool.models.tflite_int8 import int8_tflite
    from katapool.models.validate import (
        FP16_LIMITS,
        FP32_LIMITS,
        compare,
        engine_reference,
        session_evals,
        with_explicit_rules,
    )

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=100)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--nets", type=Path, nargs="*")
    ap.add_argument("--bench-seconds", type=float, default=5.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    info = probe_version(resolve_engine(None).path)
    games = sorted(SHARED.glob("sgf/*/*.sgf"))
    threads = os.cpu_count() or 1
    print(f"machine: {machine()}; KataGo {info.version}; {len(games)} games from ../shared/sgf; "
          f"LiteRT and ONNX Runtime on {threads} threads", flush=True)
    results = []
    for net in args.nets or networks():
        model = load_model(net)
        with tempfile.TemporaryDirectory(prefix="kp-mobile-report-") as tmp:
            cfg = Path(tmp) / "gtp.cfg"
            cfg.write_text(build_config(mode=Mode.GTP, info=info, model=net, preset="desktop").text)
            checked, calibration = split_positions(with_explicit_rules(games, Path(tmp)),
                                                   args.positions, args.calibration)
            began = time.perf_counter()
            samples = engine_reference(model, info.path, cfg, checked, input_model=G170)
            proto = export_onnx(model)
            feeds = calibration_feeds(model, proto.SerializeToString(), info.path, cfg,
                                      calibration, G170, Path(tmp))
            engine_seconds = time.perf_counter() - began
        ops = from_onnx(proto)
        ort = ort_speed(proto.SerializeToString(), 8, args.bench_seconds)
        for precision in ("fp32", "fp16", "int8"):
            began = time.perf_counter()
            data = int8_tflite(ops, proto, feeds) if precision == "int8" else \
                write_tflite(ops, precision)
            write_s = time.perf_counter() - began
            limits = FP32_LIMITS if precision == "fp32" else FP16_LIMITS
            report = compare(session_evals(model, LiteRTSession(data, threads), samples),
                             [s.engine for s in samples], limits)
            speeds = {b: litert_speed(data, b, args.bench_seconds, threads) for b in (1, 8)}
            results.append({
                "network": model.name, "precision": precision, "size_bytes": len(data),
                "write_seconds": write_s, "engine_seconds": engine_seconds,
                "litert_evals_per_second": {b: s.evals_per_second for b, s in speeds.items()},
                "litert_prepare_seconds": speeds[1].session_seconds,
                "ort_fp32_evals_per_second_b8": ort.evals_per_second,
                "check": report.as_dict()})
            print(f"  {model.name} {precision}: {len(data) / 1e6:.2f} MB, "
                  f"{'within' if report.passed else 'OVER'} {('FP32' if precision == 'fp32' else 'FP16')} "
                  f"limits, {speeds[8].evals_per_second:.1f} evals/s b8", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\n| network | TFLite | size MB | LiteRT evals/s b1 / b8 | ORT FP32 b8 | winrate p99 / "
          "max | lead p99 / max | top policy p99 / max | policy KL p99 / max | limits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c = r["check"]
        cells = [f"{c['errors'][k]['p99']:.2g} / {c['errors'][k]['max']:.2g}"
                 for k in ("winrate", "lead", "top_policy", "policy_kl")]
        limit = "FP32" if r["precision"] == "fp32" else "FP16"
        verdict = f"within {limit}" if c["passed"] else f"over {limit}"
        speed = r["litert_evals_per_second"]
        print(f"| {r['network']} | {r['precision'].upper()} | {r['size_bytes'] / 1e6:.2f} | "
              f"{speed[1]:.1f} / {speed[8]:.1f} | {r['ort_fp32_evals_per_second_b8']:.1f} | "
              + " | ".join(cells) + f" | {verdict} ({c['positions']} positions) |")


if __name__ == "__main__":
    main()
