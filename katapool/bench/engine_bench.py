"""The installed KataGo engine's rows: start-up to the first evaluation in ``katago gtp``, then
``katago benchmarknn`` with the same config, once per precision."""

from __future__ import annotations

import contextlib
import json
import math
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from katapool.bench.result import BenchRow, unavailable
from katapool.config.build import build_config
from katapool.config.settings import Mode
from katapool.devices.model import DeviceReport
from katapool.engine.backend import Backend
from katapool.engine.diagnose import diagnose
from katapool.engine.probe import EngineInfo
from katapool.engine.tuning import TuningEntry, load_index
from katapool.errors import KatapoolError

# Backends whose configs have a useFP16 switch (the others compute in FP32 only).
FP16_BACKENDS = frozenset({Backend.OPENCL, Backend.CUDA, Backend.TENSORRT, Backend.METAL})
PREPARE_TIMEOUT = 3600.0  # a first TensorRT plan build of a big network takes minutes
MIN_ITERATIONS, MAX_ITERATIONS = 2, 10_000


@dataclass(frozen=True)
class FirstEval:
    seconds: float | None  # process start to the first answered evaluation
    next_seconds: float | None  # one more evaluation (no NN cache: kata-raw-nn skips it)
    error: str | None


def derive_iterations(seconds: float, batch: int, eval_seconds: float | None) -> int:
    """benchmarknn iterations for about ``seconds`` of timed batches, from the time of one
    evaluation (batches cost about ``batch`` evaluations on a CPU, less on a GPU)."""
    if not eval_seconds or eval_seconds <= 0:
        return 10
    wanted = math.ceil(seconds / (batch * eval_seconds))
    return max(MIN_ITERATIONS, min(MAX_ITERATIONS, wanted))


def failure_line(text: str, returncode: int | None) -> str:
    """The engine's own words for what broke: its last error line, with the exception's name
    when it threw one (``what(): CL_BUILD_PROGRAM_FAILURE``)."""
    cause = diagnose(text, returncode)
    what = [ln.split("what():", 1)[1].strip() for ln in text.splitlines() if "what():" in ln]
    if what and what[-1] and what[-1] not in cause:
        cause += f" ({what[-1]})"
    return cause


def first_eval(katago: Path, config: Path, model: Path, workdir: Path,
               timeout: float = PREPARE_TIMEOUT) -> FirstEval:
    """Start ``katago gtp``, time ``kata-raw-nn 0`` from process start to its answer, then one
    more evaluation for the speed estimate."""
    stderr_path = workdir / "gtp-stderr.txt"
    with open(stderr_path, "w") as stderr:
        began = time.perf_counter()
        proc = subprocess.Popen([str(katago), "gtp", "-config", str(config), "-model", str(model)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()

    def ask(command: str, deadline: float) -> str | None:
        """None when answered; else what went wrong."""
        assert proc.stdin is not None
        try:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        except OSError:
            return "the engine exited before it was asked anything"
        answer: list[str] = []
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                return f"no answer to {command!r} within {timeout:.0f} s"
            if line is None:
                return "exited"
            if line == "" and answer:
                return answer[0] if answer[0].startswith("?") else None
            if line:
                answer.append(line)

    try:
        problem = ask("kata-raw-nn 0", began + timeout)
        first = time.perf_counter() - began
        if problem is None:
            again = time.perf_counter()
            problem = ask("kata-raw-nn 1", again + timeout)
            if problem is None:
                return FirstEval(first, time.perf_counter() - again, None)
            return FirstEval(first, None, None)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = stderr_path.read_text(errors="replace")
    if problem == "exited":
        return FirstEval(None, None, failure_line(text, proc.returncode))
    return FirstEval(None, None, problem + (f"; {failure_line(text, None)}" if text.strip() else ""))


@dataclass(frozen=True)
class NNBench:
    evals_per_second: float | None
    using_fp16: bool | None
    error: str | None
    note: str = ""  # how it was measured, when not by benchmarknn
    no_benchmarknn: bool = False  # an older KataGo (1.17 and before) lacks the command


# `katago benchmark`'s last line per thread count: "... nnEvals/s = 248.81 nnBatches/s = 125.45
# avgBatchSize = 1.98 (2.4 secs)".
_SEARCH_RATE_RE = re.compile(r"nnEvals/s = ([\d.]+) nnBatches/s = [\d.]+ avgBatchSize = ([\d.]+)")
SEARCH_POSITIONS = 3


def benchmarknn(katago: Path, config: Path, model: Path, batch: int, iterations: int,
                warmup: int, timeout: float) -> NNBench:
    argv = [str(katago), "benchmarknn", "-config", str(config), "-model", str(model),
            "-batch-size", str(batch), "-iterations", str(iterations), "-warmup", str(warmup),
            "-json"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return NNBench(None, None, f"benchmarknn did not finish within {timeout:.0f} s")
    if "Unknown subcommand: benchmarknn" in proc.stdout + proc.stderr:
        return NNBench(None, None, "this KataGo has no benchmarknn", no_benchmarknn=True)
    start = proc.stdout.find("{")
    if proc.returncode != 0 or start < 0:
        return NNBench(None, None, failure_line(proc.stderr + proc.stdout, proc.returncode))
    try:
        data = json.loads(proc.stdout[start:])
        rate = float(data["actualWallNNEvalsPerSec"])  # rows/s over the whole timed run
    except (ValueError, KeyError, TypeError):
        return NNBench(None, None, f"benchmarknn printed no readable result: "
                                   f"{proc.stdout[start:start + 200]!r}")
    fp16 = data.get("usingFP16")
    return NNBench(rate, fp16 if isinstance(fp16, bool) else None, None)


def search_benchmark(katago: Path, config: Path, model: Path, threads: int, seconds: float,
                     eval_seconds: float | None, timeout: float) -> NNBench:
    """For a KataGo without benchmarknn: the network evaluations/s of ``katago benchmark``'s
    searches with ``threads`` search threads (which batch up to about that many positions)."""
    per_eval = eval_seconds if eval_seconds and eval_seconds > 0 else 0.05
    visits = max(20, min(5000, int(seconds / per_eval / SEARCH_POSITIONS)))
    argv = [str(katago), "benchmark", "-config", str(config), "-model", str(model),
            "-v", str(visits), "-n", str(SEARCH_POSITIONS), "-t", str(threads)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return NNBench(None, None, f"katago benchmark did not finish within {timeout:.0f} s")
    found = _SEARCH_RATE_RE.findall(proc.stdout)
    if proc.returncode != 0 or not found:
        return NNBench(None, None, failure_line(proc.stderr + proc.stdout, proc.returncode))
    rate, batch = found[-1]
    return NNBench(float(rate), None, None,
                   note=f"no benchmarknn in this KataGo: nnEvals/s of `katago benchmark` "
                        f"({visits} visits x {SEARCH_POSITIONS} positions, {threads} search "
                        f"threads, average batch {float(batch):.1f})")


def _tuning_note(info: EngineInfo, home: Path, known_before: set[tuple[str, str, str]],
                 tuning: TuningEntry | None) -> str:
    """Whether the engine's own preparation was already done (so the start-up time is a warm
    start) or happened during the measured start."""
    if info.backend is Backend.OPENCL and tuning is not None:
        kind = tuning.kind
        if (tuning.device_name, kind, str(tuning.file)) not in known_before:
            return ("no OpenCL tuning was prepared: katapool wrote the tuner's reference "
                    "parameters just now (no tuner run); `katapool prepare` tunes for speed")
        if kind == "full":
            return "OpenCL tuning: a full tune prepared earlier (`katapool prepare`)"
        return ("OpenCL tuning: reference parameters prepared earlier (`katapool prepare "
                "--fast`); a full `katapool prepare` is faster")
    if info.backend is Backend.TENSORRT:
        cache = home / "trtcache"
        if cache.is_dir() and any(cache.iterdir()):
            return f"TensorRT plan cache existed ({cache}); a first start builds plans"
        return "no TensorRT plan cache: preparation includes building the plan"
    return ""


def engine_labels(engines: list[EngineInfo]) -> list[str]:
    """Row names: "KataGo Eigen"; with the version when two engines share a backend, and a
    number when they share that too (the same build measured twice)."""
    labels = [f"KataGo {e.backend.label}" for e in engines]
    if len(set(labels)) < len(labels):
        labels = [f"{label} {e.version}" if labels.count(label) > 1 else label
                  for label, e in zip(labels, engines, strict=True)]
    if len(set(labels)) < len(labels):
        labels = [f"{label} #{labels[:i].count(label) + 1}" if labels.count(label) > 1 else label
                  for i, label in enumerate(labels)]
    return labels


def engine_rows(info: EngineInfo, model: Path, report: DeviceReport, batch: int, seconds: float,
                iterations: int | None, workdir: Path,
                on_step: Callable[[str], None], method: str | None = None) -> list[BenchRow]:
    method = method or f"KataGo {info.backend.label}"
    backend = info.backend.value
    size = model.stat().st_size
    rows: list[BenchRow] = []
    for precision in ("fp32", "fp16"):
        fp16 = precision == "fp16"
        if fp16 and info.backend not in FP16_BACKENDS:
            rows.append(unavailable(method, backend, batch, f"the {info.backend.label} backend "
                                    "computes in FP32 only", precision))
            continue
        on_step(f"{method} {precision.upper()}: start-up to the first evaluation")
        known = {(e.device_name, str(e.kind), str(e.file)) for e in load_index().entries}
        try:
            built = build_config(mode=Mode.GTP, info=info, model=model, preset="desktop",
                                 overrides={"useFP16": fp16, "nnMaxBatchSize": batch},
                                 log_dir=workdir / "logs", report=report)
        except KatapoolError as exc:
            rows.append(BenchRow(method, backend, precision, batch, None, None, size,
                                 f"no config: {exc}", "failed"))
            continue
        cfg = workdir / f"gtp-{precision}.cfg"
        cfg.write_text(built.text)
        notes = [n for n in [_tuning_note(info, Path(built.settings.homeDataDir), known,
                                          built.tuning)] if n]
        start = first_eval(info.path, cfg, model, workdir)
        if start.error is not None:
            rows.append(BenchRow(method, backend, precision, batch, None, None, size,
                                 start.error, "failed"))
            continue
        count = iterations or derive_iterations(seconds, batch, start.next_seconds)
        warmup = 1 if count < 10 else min(5, count // 10)
        per_batch = batch * (start.next_seconds or 1.0)
        on_step(f"{method} {precision.upper()}: benchmarknn, batch {batch}, {count} iterations")
        timeout = 300 + 10 * per_batch * (count + warmup)
        result = benchmarknn(info.path, cfg, model, batch, count, warmup, timeout=timeout)
        if result.no_benchmarknn:
            on_step(f"{method} {precision.upper()}: katago benchmark, {batch} search threads")
            result = search_benchmark(info.path, cfg, model, batch, seconds, start.next_seconds,
                                      timeout)
        if result.error is not None:
            rows.append(BenchRow(method, backend, precision, batch, None, start.seconds, size,
                                 result.error, "failed"))
            continue
        if fp16 and result.using_fp16 is False:
            notes.insert(0, "asked for FP16, the engine ran FP32")
        notes.insert(0, result.note or f"benchmarknn, {count} iterations")
        rows.append(BenchRow(method, backend, precision, batch, result.evals_per_second,
                             start.seconds, size, "; ".join(notes)))
    return rows

