#!/usr/bin/env python3
"""Accuracy, size and ONNX Runtime CPU speed of FP32, FP16 and INT8 exports of each network,
against the engine on the same positions; prints the Markdown tables of docs/quantization.md.

    .venv/bin/python benchmarks/quantization_report.py [--positions 200] [--calibration 64]
        [--nets NET...] [--bench-seconds 10] [--json OUT.json]

The engine's reference (inputs and `kata-raw-nn` outputs) is made once per network and shared
by every precision; calibration positions come from the same games but never coincide with
validation positions. Each row is what `katapool model quantize` reports for one file.
"""

from __future__ import annotations

import argparse
import json
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
    from katapool.models import load_model, quantize
    from katapool.models.export_onnx import export_onnx
    from katapool.models.precision_check import calibration_feeds, check_variant, split_positions
    from katapool.models.validate import engine_reference, with_explicit_rules

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=200, help="0: speed and size only")
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--method", default="percentile")
    ap.add_argument("--nets", type=Path, nargs="*")
    ap.add_argument("--bench-seconds", type=float, default=10.0)
    ap.add_argument("--bench-batch", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    info = probe_version(resolve_engine(None).path)
    games = sorted(SHARED.glob("sgf/*/*.sgf"))
    print(f"machine: {machine()}; KataGo {info.version}; {len(games)} games from ../shared/sgf",
          flush=True)
    results = []
    for net in args.nets or networks():
        model = load_model(net)
        with tempfile.TemporaryDirectory(prefix="kp-quant-report-") as tmp:
            cfg = Path(tmp) / "gtp.cfg"
            cfg.write_text(build_config(mode=Mode.GTP, info=info, model=net, preset="desktop").text)
            validation, calibration = split_positions(with_explicit_rules(games, Path(tmp)),
                                                      args.positions, args.calibration)
            began = time.perf_counter()
            samples = engine_reference(model, info.path, cfg, validation, input_model=G170) \
                if validation else None
            fp32 = export_onnx(model)
            feeds = calibration_feeds(model, fp32.SerializeToString(), info.path, cfg,
                                      calibration, G170, Path(tmp))
            engine_seconds = time.perf_counter() - began
        files = {"fp32": fp32, "fp16": quantize.to_fp16(fp32)}
        for acts in ("int8", "uint8"):
            began = time.perf_counter()
            q = quantize.to_int8(fp32, feeds, quantize.Int8Options(args.method, activations=acts))
            files[f"int8-{'s8' if acts == 'int8' else 'u8'}"] = q
            print(f"  {model.name} INT8 {acts}: {time.perf_counter() - began:.1f} s to quantize",
                  flush=True)
        for label, proto in files.items():
            v = check_variant(model, label, proto.SerializeToString(), samples, args.bench_batch,
                              args.bench_seconds)
            results.append({"network": model.name, "engine_seconds": engine_seconds, **v.as_dict(),
                            "precision": label})
            print(f"  {model.name} {label}: done", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\n| network | precision | size MB | ORT CPU evals/s (batch "
          f"{args.bench_batch}) | winrate p99 / max | lead p99 / max | top policy p99 / max "
          "| policy KL p99 / max | ownership p99 / max | FP16 limits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        checked = r["validation"]
        cells = ["-"] * 5 if checked is None else [
            f"{checked['errors'][k]['p99']:.2g} / {checked['errors'][k]['max']:.2g}"
            for k in ("winrate", "lead", "top_policy", "policy_kl", "ownership")]
        speed = "-" if r["evals_per_second"] is None else f"{r['evals_per_second']:.1f}"
        verdict = "-" if checked is None else ("within" if checked["passed"] else "over")
        print(f"| {r['network']} | {r['precision']} | {r['size_bytes'] / 1e6:.1f} | {speed} | "
              + " | ".join(cells) + f" | {verdict} |")


if __name__ == "__main__":
    main()
