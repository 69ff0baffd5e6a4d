#!/usr/bin/env python3
"""Mixed-precision INT8 for each network: the trade-off between error and ONNX Runtime CPU speed
per number of INT8 nodes, the file the search stops at, and that file on held-out positions.

    .venv/bin/python benchmarks/int8_mixed_report.py [--nets NET...] [--validation 200]
        [--calibration 96] [--budget 0.5] [--activations int8 uint8] [--bench-seconds 5]
        [--cache DIR] [--json OUT.json] [--chart docs/images/int8-tradeoff.png]
    .venv/bin/python benchmarks/int8_mixed_report.py --from-json A.json B.json [--chart PNG]

For every network: the engine's reference (inputs and `kata-raw-nn` outputs) on validation and
calibration positions from ../shared/sgf (disjoint; kept in --cache between runs), then
`katapool.models.int8_mixed.search` for each activation type (the calibration positions rank
the nodes and stop the search; the validation positions are never seen by it), then the chosen
file and the FP32 export on the validation positions and timed back to back.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

from pool_bench import ROOT, machine

SHARED = ROOT.parent / "shared"
G170 = SHARED / "models" / "g170-b6c96-s175395328-d26788732.bin.gz"
SHORT = {"g170-b6c96": "g170-b6c96", "b7c96h3tfrs": "b7c96h3tfrs",
         "b7c96h6kv3qk32v16tflrs": "b7c96h6kv3…", "b10c384h6nbttflrs": "b10c384h6nbttflrs"}


def networks() -> list[Path]:
    from katapool.engine.discovery import resolve_model

    return [*sorted((SHARED / "models").glob("*.bin.gz")), resolve_model(None)]


def reference(net: Path, validation: int, calibration: int, cache: Path) -> dict[str, Any]:
    """The engine's samples for the validation and calibration positions, made once."""
    from katapool.config.build import build_config
    from katapool.config.settings import Mode
    from katapool.engine.discovery import resolve_engine
    from katapool.engine.probe import probe_version
    from katapool.models import load_model
    from katapool.models.precision_check import split_positions
    from katapool.models.validate import engine_reference, with_explicit_rules

    stored = cache / f"{net.name}-{validation}-{calibration}.pkl"
    if stored.exists():
        cached: dict[str, Any] = pickle.loads(stored.read_bytes())  # our own file, see below
        return cached
    info = probe_version(resolve_engine(None).path)
    model = load_model(net)
    games = sorted(SHARED.glob("sgf/*/*.sgf"))
    with tempfile.TemporaryDirectory(prefix="kp-mixed-") as tmp:
        cfg = Path(tmp) / "gtp.cfg"
        cfg.write_text(build_config(mode=Mode.GTP, info=info, model=net, preset="desktop").text)
        val, cal = split_positions(with_explicit_rules(games, Path(tmp)), validation, calibration)
        data = {"validation": engine_reference(model, info.path, cfg, val, input_model=G170),
                "calibration": engine_reference(model, info.path, cfg, cal, input_model=G170)}
    cache.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(pickle.dumps(data))
    return data


def one_network(net: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from katapool.models import load_model
    from katapool.models.export_onnx import export_onnx
    from katapool.models.int8_mixed import MixedSearch, cpu_session, limit_ratio, search
    from katapool.models.precision_check import feeds_from_samples
    from katapool.models.quantize import Int8Options
    from katapool.models.speed import ort_speed
    from katapool.models.validate import FP16_LIMITS, compare, session_evals

    model = load_model(net)
    data = reference(net, args.validation, args.calibration, args.cache)
    fp32 = export_onnx(model)
    fp32_bytes = fp32.SerializeToString()
    feeds = feeds_from_samples(model, fp32_bytes, data["calibration"])
    engine = [s.engine for s in data["validation"]]

    def speed(onnx_bytes: bytes) -> float:
        return ort_speed(onnx_bytes, args.bench_batch, args.curve_seconds).evals_per_second

    rows = []
    for acts in args.activations:
        def progress(stage: str, done: int, total: int, acts: str = acts) -> None:
            if total == 0 or done % 10 == 0:
                print(f"  {model.name} {acts}: {stage} {done}/{total or ''}", flush=True)

        began = time.perf_counter()
        result = search(MixedSearch(
            model, fp32, feeds, data["calibration"], Int8Options(activations=acts),
            budget=args.budget, speed=speed if args.curve_seconds > 0 else None,
            progress=progress))
        search_seconds = time.perf_counter() - began
        chosen = result.proto.SerializeToString()
        checked = compare(session_evals(model, cpu_session(chosen), data["validation"], batch=16), engine,
                          FP16_LIMITS)
        # FP32 and the chosen file timed back to back, twice each, alternating: this 2-core
        # machine's speed drifts by several percent between minutes.
        fp32_speed = chosen_speed = 0.0
        for _ in range(2):
            fp32_speed += ort_speed(fp32_bytes, args.bench_batch, args.bench_seconds).evals_per_second
            chosen_speed += ort_speed(chosen, args.bench_batch, args.bench_seconds).evals_per_second
        rows.append({
            "network": model.name, "activations": acts, "budget": args.budget,
            "search_seconds": search_seconds, "candidates": result.candidates,
            "int8_count": len(result.chosen), "stopped": result.stopped,
            "validation": checked.as_dict(), "validation_ratio": limit_ratio(checked),
            "fp32_evals_per_second": fp32_speed / 2, "int8_evals_per_second": chosen_speed / 2,
            "size_bytes": len(chosen), "fp32_size_bytes": len(fp32_bytes),
            **result.as_dict()})
        print(f"  {model.name} {acts}: {len(result.chosen)}/{result.candidates} INT8, "
              f"validation {limit_ratio(checked):.2f}x limits, "
              f"{chosen_speed / max(fp32_speed, 1e-9):.2f}x FP32 speed", flush=True)
    return rows


def chart(rows: list[dict[str, Any]], out: Path) -> None:
    """Per network: error (left, log) and speed against FP32 (right) by number of INT8 nodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"int8": "#4c72b0", "uint8": "#dd8452"}
    nets = list(dict.fromkeys(r["network"] for r in rows))
    fig, axes = plt.subplots(1, len(nets), figsize=(4.3 * len(nets), 3.9), squeeze=False)
    for ax, name in zip(axes[0], nets, strict=True):
        speed_ax = ax.twinx()
        for r in (r for r in rows if r["network"] == name):
            curve = sorted(r["curve"], key=lambda t: t["int8_nodes"])
            form = "s8" if r["activations"] == "int8" else "u8"
            colour = colours[r["activations"]]
            ax.plot([t["int8_nodes"] for t in curve], [t["ratio"] for t in curve], "o-",
                    color=colour, markersize=3, label=f"{form} error")
            ax.plot([r["int8_count"]], [next(t["ratio"] for t in curve
                                             if t["int8_nodes"] == r["int8_count"])],
                    "*", color=colour, markersize=11)
            base = next((t["evals_per_second"] for t in curve if t["int8_nodes"] == 0), None)
            timed = [t for t in curve if t["evals_per_second"]]
            if base and timed:
                speed_ax.plot([t["int8_nodes"] for t in timed],
                              [t["evals_per_second"] / base for t in timed], "s--",
                              color=colour, markersize=2.5, linewidth=0.8, alpha=0.7,
                              label=f"{form} speed")
        ax.axhline(1.0, color="#c44e52", linewidth=0.9)
        ax.axhline(rows[0]["budget"], color="#c44e52", linewidth=0.8, linestyle=":")
        ax.set_yscale("log")
        ax.set_title(SHORT.get(name, name), fontsize=9)
        ax.set_xlabel("INT8 nodes (least sensitive first)", fontsize=8)
        ax.set_ylabel("p99 error / KataGo FP16 limit (log)", fontsize=8)
        speed_ax.set_ylabel("ORT CPU speed / FP32, batch 8", fontsize=8)
        speed_ax.axhline(1.0, color="#9a9a9a", linewidth=0.6)
        ax.tick_params(labelsize=7)
        speed_ax.tick_params(labelsize=7)
        lines = ax.get_legend_handles_labels()
        more = speed_ax.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=6.5, loc="upper left")
    fig.suptitle("Mixed INT8: error on the calibration positions (solid; red: KataGo's FP16 limits, "
                 "dotted: the budget; star: chosen) and speed (dashed)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def table(rows: list[dict[str, Any]]) -> None:
    print("\n| network | activations | INT8 nodes | winrate p99 | lead p99 | top policy p99 "
          "| policy KL p99 | × FP16 limits | FP16 limits | ORT CPU evals/s FP32 → INT8 | speed "
          "| MB FP32 → INT8 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e = r["validation"]["errors"]
        verdict = "within" if r["validation_ratio"] <= 1.0 else "over"
        print(f"| {SHORT.get(r['network'], r['network'])} | {'s8' if r['activations'] == 'int8' else 'u8'} "
              f"| {r['int8_count']} / {r['candidates']} | {e['winrate']['p99']:.2g} "
              f"| {e['lead']['p99']:.2g} | {e['top_policy']['p99']:.2g} "
              f"| {e['policy_kl']['p99']:.2g} | {r['validation_ratio']:.2f} | {verdict} "
              f"| {r['fp32_evals_per_second']:.1f} → {r['int8_evals_per_second']:.1f} "
              f"| {r['int8_evals_per_second'] / r['fp32_evals_per_second']:.2f}× "
              f"| {r['fp32_size_bytes'] / 1e6:.1f} → {r['size_bytes'] / 1e6:.1f} |")
    print("\nCurves (selection positions; × FP16 limits, evals/s):")
    for r in rows:
        pts = ", ".join(f"{t['int8_nodes']}: {t['ratio']:.2f}"
                        + (f" @ {t['evals_per_second']:.0f}" if t["evals_per_second"] else "")
                        for t in r["curve"])
        print(f"- {SHORT.get(r['network'], r['network'])} {r['activations']}: {pts}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", type=Path, nargs="*")
    ap.add_argument("--validation", type=int, default=200)
    ap.add_argument("--calibration", type=int, default=96)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--activations", nargs="+", default=["int8", "uint8"],
                    choices=["int8", "uint8"])
    ap.add_argument("--bench-batch", type=int, default=8)
    ap.add_argument("--bench-seconds", type=float, default=5.0)
    ap.add_argument("--curve-seconds", type=float, default=2.0, help="0: no speed on the curve")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kp-mixed-ref")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--chart", type=Path)
    ap.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                    help="print the tables (and --chart) from earlier runs' --json files")
    args = ap.parse_args()
    if args.from_json:
        rows = [row for f in args.from_json for row in json.loads(f.read_text())]
        table(rows)
        if args.chart:
            chart(rows, args.chart)
        return
    print(f"machine: {machine()}", flush=True)
    rows = []
    for net in args.nets or networks():
        rows += one_network(net, args)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    table(rows)
    if args.chart:
        chart(rows, args.chart)


if __name__ == "__main__":
    main()
