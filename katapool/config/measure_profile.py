"""``katapool prepare --measure``: choose useFP16, nnMaxBatchSize and numSearchThreads for one
device and network by measuring them, and keep the result as a profile.

FP16 is kept only if the engine computes in FP16 on this device and ``testgpuerror`` finds its
errors against FP32 within KataGo's limits. The batch size comes from ``benchmarknn``
(network throughput per batch size), the thread count from ``benchmark`` (whole searches):
for throughput in analysis mode, for short searches in GTP mode.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from katapool import paths
from katapool.config.build import BuiltConfig, build_config
from katapool.config.profile import (
    Decision,
    FileIdentity,
    NetworkIdentity,
    Profile,
    device_identity,
    engine_identity,
    find_profile,
    network_name,
    now,
    profile_path,
    save_profile,
)
from katapool.config.settings import Mode
from katapool.devices.model import Device, DeviceReport
from katapool.engine.backend import Backend
from katapool.engine.measure import (
    BatchTiming,
    BenchmarkReport,
    ToolRun,
    candidate_batches,
    candidate_threads,
    fp16_failure,
    gpu_error_figures,
    model_load_error,
    parse_benchmark,
    parse_benchmarknn,
    parse_gpu_error,
    run_tool,
)
from katapool.engine.probe import EngineInfo
from katapool.engine.tuning import check_writable
from katapool.errors import EngineStartError, ModelError

# Throughput (analysis): the smallest batch this close to the best; latency (GTP): a smaller
# batch fills sooner from one search's threads, so it may give up a little more throughput.
BATCH_SHARE = {Mode.ANALYSIS: 0.95, Mode.GTP: 0.90}
# More threads search a little worse per visit: the fewest threads this close to the most
# visits/s win (analysis mode).
THREADS_SHARE = 0.97


@dataclass
class MeasureOptions:
    modes: list[Mode] = field(default_factory=lambda: [Mode.ANALYSIS, Mode.GTP])
    board_size: int = 19
    visits: int = 100  # per benchmark search
    positions: int = 3  # benchmark positions
    iterations: int = 20  # benchmarknn timed batches per candidate
    batches: list[int] | None = None  # default: around the rule's batch
    threads: list[int] | None = None  # default: around the chosen batch
    preset: str = "desktop"
    force: bool = False
    timeout: float = 1800.0  # hang guard per tool run


@dataclass
class MeasureResult:
    device: str
    mode: Mode
    action: str  # "measured" or "up-to-date"
    file: Path
    profile: Profile
    seconds: float


def measure_devices(info: EngineInfo, model: Path, devices: list[Device], report: DeviceReport,
                    opts: MeasureOptions, console: Console) -> list[MeasureResult]:
    results: list[MeasureResult] = []
    for device in devices:
        results += _measure_device(info, model, device, report, opts, console)
    return results


def _measure_device(info: EngineInfo, model: Path, device: Device, report: DeviceReport,
                    opts: MeasureOptions, console: Console) -> list[MeasureResult]:
    found = {mode: find_profile(info, device, model, mode) for mode in opts.modes}
    if not opts.force and all(p is not None for p, _, _ in found.values()):
        return [MeasureResult(device.spec, mode, "up-to-date", path, prof, 0.0)
                for mode, (prof, path, _) in found.items() if prof is not None]
    for _, _, note in found.values():
        if note:
            console.print(f"[yellow]{note}[/]", soft_wrap=True)
    check_writable(paths.profiles_dir(), "measured profiles")
    started = time.monotonic()
    base = build_config(mode=Mode.GTP, info=info, model=model, device_spec=device.spec,
                        preset=opts.preset, report=report, use_profile=False)
    console.print(f"measuring {device.spec} ({device.name}) with {model.name}, "
                  f"{opts.board_size}x{opts.board_size}", soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="katapool-measure-") as tmp:
        scratch = Path(tmp)
        fp16, platform = _decide_fp16(info, model, device, report, opts, console, scratch)
        batch_runs = _time_batches(info, model, device, report, opts, console, scratch,
                                   fp16.value, base.settings.nnMaxBatchSize)
        bench_cache: dict[int, BenchmarkReport] = {}
        results = []
        identity = (engine_identity(info), device_identity(device, info.backend, platform),
                    NetworkIdentity(name=network_name(model), file=FileIdentity.of(model)))
        for mode in opts.modes:
            batch = _decide_batch(mode, batch_runs, opts)
            assert isinstance(batch.value, int)
            if batch.value not in bench_cache:
                bench_cache[batch.value] = _bench_threads(
                    info, model, device, report, opts, console, scratch, bool(fp16.value),
                    batch.value, base.settings.numSearchThreads)
            threads = _decide_threads(mode, bench_cache[batch.value], batch.value, opts)
            profile = Profile(
                engine=identity[0], device=identity[1], network=identity[2], mode=mode,
                decisions=[fp16, batch, threads], measured_at=now(),
                seconds=round(time.monotonic() - started, 1),
                options={"board_size": opts.board_size, "visits": opts.visits,
                         "positions": opts.positions, "iterations": opts.iterations,
                         "preset": opts.preset})
            path = profile_path(info.backend, device, model, mode)
            save_profile(path, profile)
            results.append(MeasureResult(device.spec, mode, "measured", path, profile,
                                         profile.seconds))
    return results


def _config(info: EngineInfo, model: Path, device: Device, report: DeviceReport,
            opts: MeasureOptions, scratch: Path, name: str, **overrides: Any) -> Path:
    built: BuiltConfig = build_config(mode=Mode.GTP, info=info, model=model,
                                      device_spec=device.spec, preset=opts.preset,
                                      report=report, overrides=overrides, use_profile=False,
                                      log_dir=scratch / "logs")
    path = scratch / f"{name}.cfg"
    path.write_text(built.text)
    return path


def _decide_fp16(info: EngineInfo, model: Path, device: Device, report: DeviceReport,
                 opts: MeasureOptions, console: Console,
                 scratch: Path) -> tuple[Decision, str | None]:
    if info.backend is Backend.EIGEN:
        return Decision(setting="useFP16", value=False,
                        reason="the Eigen (CPU) backend computes in FP32 only"), None
    cfg = _config(info, model, device, report, opts, scratch, "fp16", useFP16=True)
    board = str(opts.board_size) if opts.board_size in (9, 13, 19) else "19"
    run = run_tool([str(info.path), "testgpuerror", "-config", str(cfg), "-model", str(model),
                    "-boardsize", board, "-quick"], console,
                   f"{device.spec}: FP16 against FP32 (katago testgpuerror)", opts.timeout)
    _network_loaded(run, model)
    found = parse_gpu_error(run.output)
    figures: dict[str, Any] = {"exit_code": run.returncode, "seconds": round(run.seconds, 1),
                               "board_size": int(board)}
    if found.fp16_flags:
        figures["engine_fp16"] = found.fp16_flags
    if found.compared_fp16:
        figures.update(gpu_error_figures(found, "current cfg"))
        batched = gpu_error_figures(found, "batched current cfg")
        figures.update({f"batched_{k}": v for k, v in batched.items()})
    if run.failed and not found.compared_fp16:
        reason = f"FP32, because FP16 could not run on this device: {fp16_failure(run)}"
        decision = Decision(setting="useFP16", value=False, reason=reason, figures=figures)
    elif not found.compared_fp16:
        decision = Decision(setting="useFP16", value=False, figures=figures,
                            reason="FP32, because the engine computed in FP32 even with FP16 "
                                   "asked for (no FP16 on this device)")
    elif run.failed:
        margin = found.margins.get("current cfg", {})
        decision = Decision(
            setting="useFP16", value=False, figures=figures,
            reason=f"FP32, because FP16's errors exceed KataGo's limits (worst: "
                   f"{margin.get('max_of_limit', '?')}x of the limit on "
                   f"{margin.get('max_metric', '?')})")
    else:
        margin = found.margins.get("current cfg", {})
        decision = Decision(
            setting="useFP16", value=True, figures=figures,
            reason=f"FP16, within KataGo's error limits against FP32 (closest: "
                   f"{margin.get('p99_of_limit', '?')}x of the 99% limit on "
                   f"{margin.get('p99_metric', '?')})")
    console.print(f"  useFP16 = {str(decision.value).lower()}: {decision.reason} "
                  f"({run.seconds:.1f} s)", soft_wrap=True)
    return decision, found.platform


def _time_batches(info: EngineInfo, model: Path, device: Device, report: DeviceReport,
                  opts: MeasureOptions, console: Console, scratch: Path, fp16: bool | int,
                  rule_batch: int) -> list[BatchTiming]:
    sizes = opts.batches or candidate_batches(rule_batch)
    cfg = _config(info, model, device, report, opts, scratch, "batch", useFP16=bool(fp16),
                  nnMaxBatchSize=max(sizes))
    timings = []
    for size in sizes:
        run = run_tool([str(info.path), "benchmarknn", "-config", str(cfg), "-model",
                        str(model), "-batch-size", str(size), "-boardsize",
                        str(opts.board_size), "-iterations", str(opts.iterations),
                        "-warmup", str(max(1, opts.iterations // 10)), "-json"], console,
                       f"{device.spec}: network batch {size} (katago benchmarknn)", opts.timeout)
        _network_loaded(run, model)
        timing = parse_benchmarknn(run.output)
        if run.failed or timing is None:
            raise EngineStartError(f"katago benchmarknn failed on {device.spec} at batch "
                                   f"{size}: {fp16_failure(run)}")
        console.print(f"  batch {size}: {timing.nn_evals_per_s:.1f} nnEvals/s, "
                      f"{timing.median_batch_ms:.1f} ms per batch", soft_wrap=True)
        timings.append(timing)
    return timings


def _network_loaded(run: ToolRun, model: Path) -> None:
    """A network KataGo cannot load fails the measuring at once, as what it is: not an FP16
    or device fault to record in a profile."""
    if run.failed and (why := model_load_error(run)):
        raise ModelError(f"{model} is not a network KataGo can load: {why}")


def _decide_batch(mode: Mode, timings: list[BatchTiming], opts: MeasureOptions) -> Decision:
    best = max(timings, key=lambda t: t.nn_evals_per_s)
    share = BATCH_SHARE[mode]
    chosen = min((t for t in timings if t.nn_evals_per_s >= share * best.nn_evals_per_s),
                 key=lambda t: t.batch)
    goal = ("throughput: the smallest batch" if mode is Mode.ANALYSIS
            else "latency: the smallest batch (fills sooner from one search)")
    reason = (f"{goal} within {round((1 - share) * 100)}% of the best network throughput: "
              f"{chosen.nn_evals_per_s:.1f} nnEvals/s at batch {chosen.batch} "
              f"({chosen.median_batch_ms:.1f} ms per batch); best {best.nn_evals_per_s:.1f} "
              f"at batch {best.batch}")
    figures = {"tool": "benchmarknn", "board_size": opts.board_size,
               "iterations": opts.iterations,
               "candidates": {str(t.batch): {"nn_evals_per_s": round(t.nn_evals_per_s, 2),
                                             "median_batch_ms": round(t.median_batch_ms, 2)}
                              for t in timings}}
    return Decision(setting="nnMaxBatchSize", value=chosen.batch, reason=reason, figures=figures)


def _bench_threads(info: EngineInfo, model: Path, device: Device, report: DeviceReport,
                   opts: MeasureOptions, console: Console, scratch: Path, fp16: bool,
                   batch: int, rule_threads: int) -> BenchmarkReport:
    counts = opts.threads or candidate_threads(max(rule_threads, batch))
    cfg = _config(info, model, device, report, opts, scratch, f"threads-{batch}", useFP16=fp16,
                  nnMaxBatchSize=batch)
    run = run_tool([str(info.path), "benchmark", "-config", str(cfg), "-model", str(model),
                    "-v", str(opts.visits), "-n", str(opts.positions), "-boardsize",
                    str(opts.board_size), "-t", ",".join(map(str, counts)),
                    "-fixed-batch-size", str(batch)], console,
                   f"{device.spec}: search threads {','.join(map(str, counts))} at batch {batch} "
                   "(katago benchmark)", opts.timeout)
    found = parse_benchmark(run.output)
    if run.failed or not found.rows:
        raise EngineStartError(f"katago benchmark failed on {device.spec}: {fp16_failure(run)}")
    for row in found.rows:
        console.print(f"  threads {row.threads}: {row.visits_per_s:.1f} visits/s, "
                      f"{row.nn_evals_per_s:.1f} nnEvals/s, average batch {row.avg_batch:.2f}"
                      + (f", {row.elo_vs_first:+d} Elo" if row.elo_vs_first is not None else ""),
                      soft_wrap=True)
    return found


def _decide_threads(mode: Mode, bench: BenchmarkReport, batch: int,
                    opts: MeasureOptions) -> Decision:
    top = max(r.visits_per_s for r in bench.rows)
    fastest = min((r for r in bench.rows if r.visits_per_s >= THREADS_SHARE * top),
                  key=lambda r: r.threads)
    first = bench.rows[0].threads
    figures: dict[str, Any] = {
        "tool": "benchmark", "visits": opts.visits, "positions": opts.positions,
        "board_size": opts.board_size, "batch": batch, "recommended": bench.recommended,
        "candidates": {str(r.threads): {"visits_per_s": r.visits_per_s,
                                        "nn_evals_per_s": r.nn_evals_per_s,
                                        "avg_batch": r.avg_batch,
                                        "elo_vs_first": r.elo_vs_first} for r in bench.rows}}
    pick = next((r for r in bench.rows if r.threads == bench.recommended), None)
    if mode is Mode.GTP and pick is not None:
        elo = f"{pick.elo_vs_first:+d} Elo" if pick.elo_vs_first is not None else "best Elo"
        reason = (f"latency: katago benchmark's pick for a 5 s search ({elo} against "
                  f"{first} thread(s); {pick.visits_per_s:.1f} visits/s at batch {batch})")
        return Decision(setting="numSearchThreads", value=pick.threads, reason=reason,
                        figures=figures)
    goal = "throughput" if mode is Mode.ANALYSIS else "latency (no pick from katago benchmark)"
    reason = (f"{goal}: the fewest threads within {round((1 - THREADS_SHARE) * 100)}% of the "
              f"most visits/s over {', '.join(str(r.threads) for r in bench.rows)} threads "
              f"({fastest.visits_per_s:.1f} visits/s at {fastest.threads}; most {top:.1f}; "
              f"batch {batch})")
    return Decision(setting="numSearchThreads", value=fastest.threads, reason=reason,
                    figures=figures)
