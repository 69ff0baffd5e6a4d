"""Build the members of an analysis pool from command-line style settings.

Two ways to configure members: the caller's own KataGo config(s) (``-config``, as any program
that launches ``katago analysis`` passes them), with only the device moved per member; or a
config katapool generates per device.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from katapool import paths
from katapool.config.build import build_config, tuning_for
from katapool.config.settings import BACKEND_PREFIX, Mode
from katapool.devices import discover_devices
from katapool.engine.backend import Backend
from katapool.engine.discovery import resolve_engine, resolve_model
from katapool.engine.probe import EngineInfo, probe_version
from katapool.engine.process import prune_logs
from katapool.pool.member import LocalMember
from katapool.pool.supervisor import MemberFactory


@dataclass
class LaunchSpec:
    info: EngineInfo
    model: Path
    human_model: Path | None = None
    configs: list[Path] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    analysis_threads: int | None = None
    gpus: list[int] | None = None
    members: int = 1
    preset: str = "server"
    start_timeout: float = 900.0
    batch: bool = False  # many positions at few visits: search positions in parallel
    machine_members: int | None = None  # members sharing this machine (default: this pool's)


def _mentions(configs: list[Path], overrides: list[str], key: str) -> bool:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=", re.M)
    return any(pattern.search(p.read_text(errors="replace")) for p in configs if p.is_file()) \
        or any(re.search(rf"(^|,)\s*{re.escape(key)}\s*=", o) for o in overrides)


def member_devices(spec: LaunchSpec) -> list[int | None]:
    if spec.gpus and spec.members > len(spec.gpus):  # several members per GPU, round robin
        return [spec.gpus[i % len(spec.gpus)] for i in range(spec.members)]
    return list(spec.gpus) if spec.gpus else [None] * spec.members


def member_labels(spec: LaunchSpec) -> list[str]:
    return ["auto" if d is None else f"gpu {d}" for d in member_devices(spec)]


def prepared_tuning_override(info: EngineInfo, model: Path, configs: list[Path],
                             overrides: list[str]) -> str | None:
    """``openclTunerFile=<katapool's prepared tuning>`` for a caller's own OpenCL config that
    names none: an app's private homeDataDir (KaTrain's ~/.katrain) would otherwise re-tune
    OpenCL for minutes at first start. None when it does not apply."""
    if info.backend is not Backend.OPENCL or _mentions(configs, overrides, "openclTunerFile"):
        return None
    report = discover_devices(info.path, model, opencl=True)
    if not report.opencl:
        return None
    return f"openclTunerFile={tuning_for([], report, info).file}"


def build_factories(spec: LaunchSpec, run_dir: Path, log_dir: Path | None = None,
                    log_prefix: str | None = None) -> list[MemberFactory]:
    """One factory per member. Member stderr goes to ``log_dir`` (default: the data dir's
    pool logs, one file per process and member)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or paths.data_dir() / "logs" / "pool"
    log_dir.mkdir(parents=True, exist_ok=True)
    # Each run leaves engine logs behind (ours and KataGo's own): keep only the newest.
    for directory in (log_dir, paths.data_dir() / "logs" / Mode.ANALYSIS.value):
        prune_logs(directory)
    prefix = f"{os.getpid()}-" if log_prefix is None else log_prefix
    per_member: list[tuple[list[str], list[str]]] = []  # (config args, extra overrides)
    devices = member_devices(spec)

    if spec.configs:
        tuning = prepared_tuning_override(spec.info, spec.model, spec.configs, spec.overrides)
        extra = [tuning] if tuning else []
        key_prefix = BACKEND_PREFIX.get(spec.info.backend)
        for device in devices:
            moved = list(extra)
            if device is not None and key_prefix:
                moved.append(f"numNNServerThreadsPerModel=1,{key_prefix}DeviceToUseThread0={device}")
            per_member.append(([a for c in spec.configs for a in ("-config", str(c))], moved))
    else:
        report = discover_devices(spec.info.path, spec.model,
                                  opencl=spec.info.backend is Backend.OPENCL)
        for i, device in enumerate(devices):
            built = build_config(mode=Mode.ANALYSIS, info=spec.info, model=spec.model,
                                 device_spec="auto" if device is None else f"gpu:{device}",
                                 preset=spec.preset,
                                 members_on_machine=spec.machine_members or len(devices),
                                 report=report)
            cfg = run_dir / f"member-{i}.cfg"
            text = built.text
            if spec.batch:
                settings = built.settings
                settings.numAnalysisThreads = max(1, settings.numAnalysisThreads
                                                  * settings.numSearchThreadsPerAnalysisThread)
                settings.numSearchThreadsPerAnalysisThread = 1
                text = settings.render("Generated by katapool (batch analysis)")
            cfg.write_text(text)
            per_member.append((["-config", str(cfg)], []))

    def factory_for(index: int) -> MemberFactory:
        config_args, moved = per_member[index]

        def make(slot: int, generation: int) -> LocalMember:
            argv = [str(spec.info.path), "analysis", *config_args, "-model", str(spec.model)]
            if spec.human_model:
                argv += ["-human-model", str(spec.human_model)]
            for override in [*spec.overrides, *moved]:
                argv += ["-override-config", override]
            if spec.analysis_threads:
                argv += ["-analysis-threads", str(spec.analysis_threads)]
            return LocalMember(f"member-{slot}", argv, start_timeout=spec.start_timeout,
                               stderr_log=log_dir / f"{prefix}member-{slot}.stderr.log")
        return make

    return [factory_for(i) for i in range(len(per_member))]


@dataclass
class Launched:
    info: EngineInfo
    factories: list[MemberFactory]
    labels: list[str]
    cleanup: Callable[[], None]
    sources: list[Path] = field(default_factory=list)  # the files its members run from


def member_count(members: int, gpus: list[int] | None) -> int:
    """How many members ``launch_from_options`` builds for these options."""
    return members if not gpus or members > len(gpus) else len(gpus)


def launch_from_options(*, model: str | Path | None = None, members: int = 1,
                        gpus: list[int] | None = None, preset: str = "desktop",
                        katago: str | Path | None = None, human_model: str | Path | None = None,
                        configs: list[Path] | None = None, overrides: list[str] | None = None,
                        analysis_threads: int | None = None, start_timeout: float = 900.0,
                        log_dir: Path | None = None, log_prefix: str | None = None,
                        batch: bool = False, machine_members: int | None = None) -> Launched:
    """Resolve the engine and networks and build member factories with generated configs
    (kept in a private run directory, removed by ``cleanup``)."""
    resolved = resolve_engine(katago)
    info = probe_version(resolved.path)
    model_path = resolve_model(model, resolved)
    human = resolve_model(human_model) if human_model else None
    count = member_count(members, gpus)
    spec = LaunchSpec(info=info, model=model_path, human_model=human, configs=list(configs or []),
                      overrides=list(overrides or []), analysis_threads=analysis_threads,
                      gpus=gpus, members=count, preset=preset, start_timeout=start_timeout,
                      batch=batch, machine_members=machine_members)
    run_dir = Path(tempfile.mkdtemp(dir=paths.run_dir(), prefix="pool-"))
    try:
        factories = build_factories(spec, run_dir, log_dir, log_prefix)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    sources = [info.path, model_path, *([human] if human else []), *spec.configs]
    return Launched(info, factories, member_labels(spec),
                    lambda: shutil.rmtree(run_dir, ignore_errors=True), sources)
