"""``katapool bench``: performance by deployment method, measured side by side on this machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from katapool.bench.chart import human_rate, human_seconds, human_size
from katapool.bench.result import BenchReport, BenchRow
from katapool.cli.common import err, make_folder, out
from katapool.cli.shared_options import add_katago, add_model
from katapool.errors import ConfigError, KatapoolError

DEFAULT_CHART = Path("katapool-bench.png")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench", help="evaluations/s, preparation time and size of every way to run a network here",
        description="The same network through every deployment method this machine has, side by "
        "side: the installed KataGo engine (FP32 and FP16 configs, `katago benchmarknn`), ONNX "
        "Runtime on the CPU (FP32, FP16, INT8 with s8 and u8 activations), LiteRT (TFLite) on the "
        "CPU (FP32, FP16, INT8), ONNX Runtime's GPU "
        "providers and TensorRT where they exist. A table (or --json) on stdout, a PNG bar chart, "
        "progress on stderr.")
    add_model(p, "network .bin.gz (default: $KATAPOOL_MODEL or the engine's bundled one)",
              type=Path, metavar="NET")
    add_katago(p, action="append", default=[],
                   help="KataGo binary; repeat to compare several (default: every installed "
                        "engine, the default one first)")
    p.add_argument("--batch", type=int, default=8, help="batch size of every measurement (default 8)")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="seconds of timed batches per measurement (default 5)")
    p.add_argument("--iterations", type=int, metavar="N",
                   help="benchmarknn iterations (default: about --seconds' worth, from the "
                        "engine's first evaluation)")
    p.add_argument("--skip", action="append", default=[], metavar="PART[,PART]",
                   help="leave out engine, onnx, tflite and/or tensorrt")
    p.add_argument("--calibration", type=Path, nargs="+", default=[], metavar="GAME",
                   help="SGF games for INT8 calibration positions (default: synthetic positions, "
                        "which are fine for speed; for accuracy see `katapool model quantize`)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    chart = p.add_mutually_exclusive_group()
    chart.add_argument("--chart", type=Path, metavar="PATH", default=DEFAULT_CHART,
                       help=f"bar chart PNG (default {DEFAULT_CHART})")
    chart.add_argument("--no-chart", action="store_true", help="no chart")
    p.set_defaults(func=cmd_bench)


def _chart_path(path: Path) -> Path:
    """The chart's file, checked now; matplotlib adds .png to a name without a suffix."""
    if path.is_dir():
        raise ConfigError(f"--chart {path} is a folder: give a file, e.g. "
                          f"{path / DEFAULT_CHART}")
    if not path.suffix:
        path = path.with_suffix(".png")
    make_folder(path.parent, f"--chart {path}: cannot make its folder")
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    from katapool.bench.runner import BenchSettings, parse_skip, run_bench
    from katapool.engine.discovery import ResolvedEngine, resolve_engine, resolve_model
    from katapool.engine.probe import EngineInfo, probe_version

    skip = parse_skip(args.skip)
    if args.model is not None and not args.model.is_file():
        raise ConfigError(f"--model {args.model}: no such file")
    settings = BenchSettings(model=args.model or Path(), batch=args.batch, seconds=args.seconds,
                             iterations=args.iterations, skip=skip,
                             calibration=list(args.calibration))
    settings.check()
    if not args.no_chart:
        args.chart = _chart_path(args.chart)  # before the minutes of measuring

    resolved: ResolvedEngine | None = None
    info: EngineInfo | None = None
    engine_problem: str | None = None
    others: list[EngineInfo] = []
    if "engine" not in skip or args.calibration or args.model is None:
        try:
            resolved = resolve_engine(args.katago[0] if args.katago else None)
            info = probe_version(resolved.path)
        except KatapoolError as exc:
            if args.katago:  # the engine asked for by name must work
                raise
            engine_problem = str(exc)
        if info is not None and "engine" not in skip:
            others = _other_engines(args.katago[1:], info) if args.katago[1:] or not args.katago \
                else []
    settings.model = resolve_model(args.model, resolved).absolute()

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("starting", total=None)

        def on_step(text: str) -> None:
            progress.update(task, description=escape(text))

        def on_row(row: BenchRow) -> None:
            rate = f"{human_rate(row.evals_per_second)} evals/s" if row.evals_per_second \
                else f"[dim]{row.status}[/]"
            progress.console.print(f"  {escape(row.label)}: {rate}")

        report = run_bench(settings, info, engine_problem, on_step, on_row, others)

    chart_path: Path | None = None
    if not args.no_chart:
        from katapool.bench.chart import plot_bench

        chart_path = plot_bench(report, args.chart)
        err.print(f"wrote {escape(str(chart_path))}")
    if args.json:
        out.out(json.dumps({**report.as_dict(), "chart": str(chart_path) if chart_path else None}))
    else:
        out.print(bench_table(report))
        print_notes(report)
    return 0


def _other_engines(paths: list[str], first: Any) -> list[Any]:
    """The engines asked for after the first; with none asked for, every other installed
    engine (each binary once), so Eigen, OpenCL on PoCL and ONNX Runtime share one table."""
    from katapool.engine.discovery import resolve_engine
    from katapool.engine.manifest import load_manifest
    from katapool.engine.probe import probe_version

    if paths:
        return [probe_version(resolve_engine(p).path) for p in paths]
    seen, found = {first.path.resolve()}, []
    for record in load_manifest().engines:
        if not record.path.exists() or record.path.resolve() in seen:
            continue
        seen.add(record.path.resolve())
        try:
            found.append(probe_version(record.path))
        except KatapoolError as exc:
            err.print(f"[yellow]skipping engine {escape(record.name)}: {escape(str(exc))}[/]")
    return found


def _reference(report: BenchReport) -> BenchRow | None:
    """The engine's FP32 row, what the other rows are compared with."""
    return next((r for r in report.rows if r.backend not in ("tensorrt", "litert-cpu")
                 and not r.backend.startswith("onnxruntime") and r.precision == "fp32"
                 and r.evals_per_second), None)


def bench_table(report: BenchReport) -> Table:
    batch = report.rows[0].batch if report.rows else report.settings.get("batch")
    reference = _reference(report)
    table = Table(title=escape(f"{report.network['name']}: performance by deployment method, "
                               f"batch {batch}"),
                  caption=escape(f"{report.machine_line()}; {report.date}"
                                 + (f"; vs engine: evals/s over {reference.label}'s" if reference else "")),
                  title_justify="left", caption_justify="left", show_edge=False)
    table.add_column("method", no_wrap=True)
    table.add_column("evals/s", justify="right", no_wrap=True)
    if reference:
        table.add_column("vs engine", justify="right", no_wrap=True)
    table.add_column("prep", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("", justify="right", style="dim", no_wrap=True)
    for i, row in enumerate(report.rows, 1):
        rate = human_rate(row.evals_per_second) if row.evals_per_second else f"[dim]{row.status}[/]"
        cells = [escape(row.label), rate]
        if reference and reference.evals_per_second:
            cells.append(f"{row.evals_per_second / reference.evals_per_second:.2f}x"
                         if row.evals_per_second else "")
        cells += [human_seconds(row.preparation_seconds) if row.preparation_seconds is not None
                  else "-",
                  human_size(row.size_bytes) if row.size_bytes is not None else "-",
                  f"[{i}]" if row.note else ""]
        table.add_row(*cells)
    return table


def print_notes(report: BenchReport) -> None:
    for i, row in enumerate(report.rows, 1):
        if row.note:
            out.print(f"[dim]\\[{i}][/] {escape(row.label)}: {escape(row.note)}")
