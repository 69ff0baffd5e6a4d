"""Run KataGo's own measuring tools and read what they print.

``testgpuerror`` compares a config's network outputs (FP16 when asked for) with FP32 on the
same device; ``benchmarknn`` times raw network batches; ``benchmark`` times whole searches
at several thread counts. Each run streams its output to a status line, so a slow device
shows where it is, and comes back as figures (or the cause of its failure).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from katapool.engine.diagnose import diagnose
from katapool.engine.probe import check_launchable
from katapool.engine.process import dies_with_this_process

_RECOMMENDED = re.compile(r"numSearchThreads\s*=\s*(\d+):.*\(recommended\)")
_BENCH_ROW = re.compile(
    r"numSearchThreads\s*=\s*(\d+):\s*\d+\s*/\s*\d+ positions, visits/s = ([\d.]+) "
    r"nnEvals/s = ([\d.]+) nnBatches/s = ([\d.]+) avgBatchSize = ([\d.]+) \(([\d.]+) secs\)"
    r"(?: \(EloDiff ([^)]+)\))?")
_ELO_ROW = re.compile(r"numSearchThreads\s*=\s*(\d+):\s+([+-]?\d+) Elo")
_ERROR_ROW = re.compile(r"^(.+?) error vs reference (\w+):\s+(.+)$")
_MARGIN_ROW = re.compile(r"^(.+?) error vs reference closest margin:\s+"
                         r"([\d.e+-]+)x of limit \((\w+) 99%\), ([\d.e+-]+)x of limit \((\w+) max\)")
_FP16_FLAGS = re.compile(r"FP16Storage (\w+) FP16Compute (\w+) FP16TensorCores (\w+)")
_PLATFORM = re.compile(r"Creating context for OpenCL Platform: (.+)$")
_WHAT = re.compile(r"what\(\):\s*(.+)$")
_CL_ERROR = re.compile(r"^error: .*: (.+)$")
_CL_COUNT = re.compile(r"^(\d+) errors? generated")
_NO_FP16 = re.compile(r"No FP16 support found", re.I)
_LOG_PREFIX = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\S*)?: ")


def parse_recommended(text: str) -> int | None:
    """The thread count ``katago benchmark`` marks as recommended (the last one it printed)."""
    found = _RECOMMENDED.findall(text)
    return int(found[-1]) if found else None


def candidate_threads(base: int) -> list[int]:
    """Thread counts around ``base`` worth timing."""
    return sorted({max(1, base // 2), base, max(1, (base * 3) // 2), base * 2})


def candidate_batches(base: int) -> list[int]:
    """Batch sizes around ``base`` worth timing: powers of two from a quarter to twice it."""
    top = max(2, 2 * base)
    out, size = [], 1
    while size <= top:
        if size * 4 >= base:
            out.append(size)
        size *= 2
    return out


@dataclass
class ToolRun:
    argv: list[str]
    returncode: int
    output: str
    seconds: float
    timed_out: bool = False

    @property
    def failed(self) -> bool:
        return self.returncode != 0 or self.timed_out


def run_tool(argv: list[str], console: Console | None, label: str,
             timeout: float = 1800.0) -> ToolRun:
    """Run one KataGo tool, showing its latest output line on ``console``'s status line.
    ``timeout``: a hang guard; the process is killed past it."""
    check_launchable(Path(argv[0]))
    started = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, errors="replace",
                            preexec_fn=dies_with_this_process())
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    status = console.status(label) if console is not None else nullcontext()
    try:
        with status as shown:
            assert proc.stdout is not None
            for raw in proc.stdout:  # text mode: KataGo's \r progress updates come as lines
                line = raw.rstrip()
                if not line:
                    continue
                lines.append(line)
                if shown is not None:
                    shown.update(f"{label}: {_short(line)}")
            code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    return ToolRun(argv, code, "\n".join(lines), elapsed, timed_out=elapsed >= timeout)


def _short(line: str, width: int = 90) -> str:
    # Drop KataGo's "2026-01-01 12:00:00+0000: " log prefix; keep the news.
    text = _LOG_PREFIX.sub("", line)
    return text if len(text) <= width else text[: width - 1] + "…"


# --- testgpuerror -------------------------------------------------------------------------


@dataclass
class GpuErrorReport:
    """What ``katago testgpuerror`` printed: per compared configuration ("fp32", "batched
    fp32", "current cfg", "batched current cfg") each metric's average, 90%, 99% and max
    error, and how close the worst one came to KataGo's limit."""

    errors: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    margins: dict[str, dict[str, Any]] = field(default_factory=dict)
    fp16_flags: dict[str, bool] = field(default_factory=dict)
    platform: str | None = None

    @property
    def compared_fp16(self) -> bool:
        """Whether the engine really ran the current config apart from FP32 (it only does
        when the config computes in FP16)."""
        return "current cfg" in self.errors


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", text)]


def parse_gpu_error(text: str) -> GpuErrorReport:
    report = GpuErrorReport()
    for line in text.splitlines():
        line = _LOG_PREFIX.sub("", line.strip())
        if m := _MARGIN_ROW.match(line):
            report.margins[m.group(1)] = {"p99_of_limit": float(m.group(2)),
                                          "p99_metric": m.group(3),
                                          "max_of_limit": float(m.group(4)),
                                          "max_metric": m.group(5)}
        elif m := _ERROR_ROW.match(line):
            values = _numbers(m.group(3))
            if len(values) == 4:
                report.errors.setdefault(m.group(1), {})[m.group(2)] = values
        elif m := _FP16_FLAGS.search(line):
            report.fp16_flags = {"storage": m.group(1) == "true",
                                 "compute": m.group(2) == "true",
                                 "tensor_cores": m.group(3) == "true"}
        elif m := _PLATFORM.search(line):
            report.platform = m.group(1).strip()
    return report


_MODEL_ERROR = re.compile(r"(Error loading or parsing model file .+)$")


def model_load_error(run: ToolRun) -> str | None:
    """KataGo's own words when it could not load the network (not a fault of the device, of
    FP16 or of a batch size), else None."""
    for line in run.output.splitlines():
        if m := _MODEL_ERROR.search(line):
            return m.group(1).strip()
    return None


def fp16_failure(run: ToolRun) -> str:
    """Why an FP16 run of ``testgpuerror`` died, in one line."""
    if run.timed_out:
        return f"testgpuerror did not finish within {run.seconds:.0f} s"
    lines = run.output.splitlines()
    what = next((m.group(1).strip() for ln in lines if (m := _WHAT.search(ln))), None)
    first_error = next((m.group(1).strip() for ln in lines if (m := _CL_ERROR.match(ln.strip()))),
                       None)
    count = next((m.group(1) for ln in lines if (m := _CL_COUNT.match(ln.strip()))), None)
    parts = []
    if what or first_error:
        detail = "; ".join(p for p in (what, first_error and f"first error: {first_error}",
                                       count and f"{count} errors") if p)
        parts.append(f"FP16 kernels failed ({detail})")
    else:
        parts.append(f"the FP16 run failed: {diagnose(run.output, run.returncode)}")
    if any(_NO_FP16.search(ln) for ln in lines):
        parts.append("the OpenCL tuner found no FP16 support on this device")
    parts.append(_exit_text(run.returncode))
    return ", ".join(parts)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def gpu_error_figures(report: GpuErrorReport, name: str = "current cfg") -> dict[str, Any]:
    """Flat figures for one compared configuration: ``<metric>_<avg|p90|p99|max>`` and the
    closest margin to KataGo's limits."""
    figures: dict[str, Any] = {}
    for metric, values in report.errors.get(name, {}).items():
        for label, value in zip(("avg", "p90", "p99", "max"), values, strict=True):
            figures[f"{metric}_{label}"] = value
    margin = report.margins.get(name)
    if margin:
        figures.update({f"margin_{k}": v for k, v in margin.items()})
    return figures


# --- benchmarknn ------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchTiming:
    batch: int
    nn_evals_per_s: float
    median_batch_ms: float
    fp16: bool


def parse_benchmarknn(text: str) -> BatchTiming | None:
    """The JSON line ``katago benchmarknn -json`` prints."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
            ms = data["perThreadMedianMs"]
            return BatchTiming(int(data["batchSize"]), float(data["sumMedianNNEvalsPerSec"]),
                               float(sum(ms) / len(ms)), bool(data.get("usingFP16", False)))
        except (ValueError, KeyError, TypeError, ZeroDivisionError):
            continue
    return None


# --- benchmark --------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreadTiming:
    threads: int
    visits_per_s: float
    nn_evals_per_s: float
    avg_batch: float
    elo_vs_first: int | None = None  # KataGo's estimate for a 5 s search, against the first


@dataclass
class BenchmarkReport:
    rows: list[ThreadTiming]
    recommended: int | None


def parse_benchmark(text: str) -> BenchmarkReport:
    """The final row per thread count (KataGo rewrites a row as positions finish) and the
    Elo estimates of its summary."""
    rows: dict[int, ThreadTiming] = {}
    elo = {int(m.group(1)): int(m.group(2)) for m in _ELO_ROW.finditer(text)}
    for m in _BENCH_ROW.finditer(text):
        threads = int(m.group(1))
        rows[threads] = ThreadTiming(threads, float(m.group(2)), float(m.group(3)),
                                     float(m.group(5)))
    ordered = [ThreadTiming(r.threads, r.visits_per_s, r.nn_evals_per_s, r.avg_batch,
                            elo.get(r.threads, 0 if i == 0 else None))
               for i, r in enumerate(sorted(rows.values(), key=lambda r: r.threads))]
    return BenchmarkReport(ordered, parse_recommended(text))
