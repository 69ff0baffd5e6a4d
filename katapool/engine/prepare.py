"""``katapool prepare``: run the engine's own preparation ahead of time, with visible progress.

OpenCL: a full ``katago tuner`` run per device (or, with ``fast``, the tuner's reference
parameters so the engine starts at once). TensorRT: a warm-up run with the exact production
config so ``homeDataDir/trtcache`` is filled, one device at a time. Results are recorded, so
running it again does nothing unless something changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from katapool import paths
from katapool.engine.analysis import AnalysisEngine
from katapool.engine.backend import Backend
from katapool.engine.diagnose import diagnose
from katapool.engine.download import sha256_of
from katapool.engine.probe import EngineInfo, OpenCLDevice
from katapool.engine.process import dies_with_this_process
from katapool.engine.tuning import (
    TuningEntry,
    check_writable,
    install_tuning_file,
    load_index,
    record_entry,
    tuning_file_complete,
    tuning_file_name,
    write_atomically,
    write_reference_file,
)
from katapool.errors import EngineStartError

_PHASE_RE = re.compile(r"^Tuning (?!\d)(.+)$")
_COUNT_RE = re.compile(r"^Testing (\d+) different configs")
_STEP_RE = re.compile(r"^Tuning (\d+)/(\d+)")


@dataclass(frozen=True)
class PrepareResult:
    device: str
    action: str  # "tuned", "reference", "up-to-date", "warmed"
    file: Path | None
    seconds: float


def prepare_opencl(
    katago: Path,
    info: EngineInfo,
    model: Path,
    devices: list[OpenCLDevice],
    console: Console,
    *,
    fast: bool = False,
    force: bool = False,
    board_size: int = 19,
    batch_size: int | None = None,
) -> list[PrepareResult]:
    results = []
    for dev in devices:
        started = time.monotonic()
        best = load_index().best(dev.name, info.version)
        good_enough = best is not None and (best.kind == "full" or fast)
        if good_enough and not force and best is not None:
            results.append(PrepareResult(dev.name, "up-to-date", best.file, 0.0))
            continue
        check_writable(paths.tuning_dir(), "OpenCL tuning")
        if fast:
            entry = write_reference_file(dev.name, info.version)
            action = "reference"
        else:
            entry = _run_tuner(katago, info, model, dev, console, board_size, batch_size)
            action = "tuned"
        entry.seconds = time.monotonic() - started
        record_entry(entry)
        results.append(PrepareResult(dev.name, action, entry.file, entry.seconds))
    return results


def _run_tuner(katago: Path, info: EngineInfo, model: Path, dev: OpenCLDevice, console: Console,
               board_size: int, batch_size: int | None) -> TuningEntry:
    final = paths.tuning_dir() / tuning_file_name(dev.name, info.version, board_size)
    # Tune into a scratch file: an interrupted or failed run keeps the previous tune.
    with tempfile.TemporaryDirectory(prefix="katapool-tune-") as tmp:
        out = Path(tmp) / "tuned.txt"
        cfg = Path(tmp) / "tune.cfg"
        cfg.write_text(f"logDir = {tmp}/logs\nhomeDataDir = {paths.katago_home()}\n")
        argv = [str(katago), "tuner", "-config", str(cfg), "-model", str(model),
                "-gpus", str(dev.index), "-output", str(out)]
        if board_size != 19:
            argv += ["-xsize", str(board_size), "-ysize", str(board_size)]
        if batch_size:
            argv += ["-batchsize", str(batch_size)]
        tail: list[str] = []
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task(f"tuning {dev.name}", total=None)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, stdin=subprocess.DEVNULL,
                                    preexec_fn=dies_with_this_process())
            try:
                assert proc.stdout is not None
                phase = "starting"
                for line in proc.stdout:
                    line = line.strip()
                    tail = (tail + [line])[-40:]
                    if m := _COUNT_RE.match(line):
                        progress.update(task, total=int(m.group(1)), completed=0)
                    elif m := _STEP_RE.match(line):
                        progress.update(task, completed=int(m.group(1)))
                    elif m := _PHASE_RE.match(line):
                        phase = m.group(1)
                        progress.update(task, description=f"{dev.name}: {phase}")
                code = proc.wait()
            finally:
                if proc.poll() is None:  # interrupted: the tuner stops with us
                    proc.kill()
                    proc.wait()
        if code != 0 or not out.exists():
            cause = diagnose("\n".join(tail), code)
            raise EngineStartError(f"OpenCL tuning failed on {dev.name}: {cause}")
        if not tuning_file_complete(out):
            raise EngineStartError(f"OpenCL tuning on {dev.name} wrote an incomplete tuning "
                                   "file (KataGo would refuse to start with it); the previous "
                                   "tuning is kept")
        install_tuning_file(out, final)
    return TuningEntry(device_name=dev.name, engine_version=info.version, kind="full",
                       file=final, board_size=board_size, model=model.name)


def _warmup_key(katago: Path, info: EngineInfo, model: Path, device_name: str, cfg: Path) -> str:
    """What a TensorRT plan depends on: engine build, GPU, network file and the config
    (board size, nnMaxBatchSize, FP16); log locations do not matter."""
    settings = [ln for ln in cfg.read_text().splitlines()
                if ln.strip() and not ln.startswith(("#", "logDir"))]
    digest = hashlib.sha256()
    for part in (str(katago.resolve()), info.version, info.git_revision or "", device_name,
                 sha256_of(model), *settings):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def _warmups_file() -> Path:
    return paths.tuning_dir() / "trt-warmups.json"


def prepare_tensorrt(
    katago: Path,
    info: EngineInfo,
    model: Path,
    configs: list[tuple[str, Path]],
    console: Console,
    start_timeout: float = 3600.0,
    force: bool = False,
) -> list[PrepareResult]:
    """Start the engine once per device config and run one query, so TensorRT builds and
    caches its engine plans for exactly that config; devices go one at a time, so several
    GPUs never build at once."""
    if info.backend is not Backend.TENSORRT:
        return []
    try:
        stored = json.loads(_warmups_file().read_text())
    except (OSError, ValueError):
        stored = []
    # A damaged record only costs warm-ups again (it once stopped prepare with a traceback).
    done = {str(key) for key in stored} if isinstance(stored, list) else set()
    cache = paths.katago_home() / "trtcache"
    results = []
    for device_name, cfg in configs:
        key = _warmup_key(katago, info, model, device_name, cfg)
        if key in done and cache.is_dir() and any(cache.iterdir()) and not force:
            results.append(PrepareResult(device_name, "up-to-date", cache, 0.0))
            continue
        started = time.monotonic()
        with console.status(f"building TensorRT engine for {device_name} (can take minutes)"):
            asyncio.run(_warm(katago, cfg, model, start_timeout))
        done.add(key)
        _warmups_file().parent.mkdir(parents=True, exist_ok=True)
        write_atomically(_warmups_file(), json.dumps(sorted(done), indent=1))
        results.append(PrepareResult(device_name, "warmed", cache, time.monotonic() - started))
    return results


async def _warm(katago: Path, cfg: Path, model: Path, start_timeout: float) -> None:
    engine = AnalysisEngine(katago, cfg, model, name="trt-warmup", start_timeout=start_timeout)
    async with engine:
        await engine.request({"moves": [], "rules": "chinese", "komi": 7.5, "boardXSize": 19,
                              "boardYSize": 19, "maxVisits": 1})
