"""Build the members of an analysis pool from command-line style settings.

Two ways to configure members: the caller's own KataGo config(s) (``-config``, as any program
that launches ``katago analysis`` passes them), with only the device moved per member; or a
config katapool generates per device.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from katapool import paths
from katapool.config.build import build_config, tuning_for
from katapool.config.settings import BACKEND_PREFIX, Mode
from katapool.devices import discover_devices
from katapool.engine.backend import Backend
from katapool.engine.probe import EngineInfo
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


def _mentions(configs: list[Path], overrides: list[str], key: str) -> bool:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=", re.M)
    return any(pattern.search(p.read_text(errors="replace")) for p in configs if p.is_file()) \
        or any(re.search(rf"(^|,)\s*{re.escape(key)}\s*=", o) for o in overrides)


def build_factories(spec: LaunchSpec, run_dir: Path) -> list[MemberFactory]:
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir = paths.data_dir() / "logs" / "pool"
    log_dir.mkdir(parents=True, exist_ok=True)
    per_member: list[tuple[list[str], list[str]]] = []  # (config args, extra overrides)
    devices: list[int | None] = list(spec.gpus) if spec.gpus else [None] * spec.members
    if spec.gpus and spec.members > len(spec.gpus):  # several members per GPU, round robin
        devices = [spec.gpus[i % len(spec.gpus)] for i in range(spec.members)]

    if spec.configs:
        extra: list[str] = []
        # Point the engine at katapool's prepared tuning unless the caller chose one, so an
        # app's private homeDataDir (KaTrain's ~/.katrain) does not re-tune OpenCL for minutes.
        if spec.info.backend is Backend.OPENCL and not _mentions(spec.configs, spec.overrides,
                                                                   "openclTunerFile"):
            report = discover_devices(spec.info.path, spec.model, opencl=True)
            if report.opencl:
                extra.append(f"openclTunerFile={tuning_for([], report, spec.info).file}")
        prefix = BACKEND_PREFIX.get(spec.info.backend)
        for device in devices:
            moved = list(extra)
            if device is not None and prefix:
                moved.append(f"numNNServerThreadsPerModel=1,{prefix}DeviceToUseThread0={device}")
            per_member.append(([a for c in spec.configs for a in ("-config", str(c))], moved))
    else:
        report = discover_devices(spec.info.path, spec.model,
                                  opencl=spec.info.backend is Backend.OPENCL)
        for i, device in enumerate(devices):
            built = build_config(mode=Mode.ANALYSIS, info=spec.info, model=spec.model,
                                 device_spec="auto" if device is None else f"gpu:{device}",
                                 preset=spec.preset, members_on_machine=len(devices),
                                 report=report)
            cfg = run_dir / f"member-{i}.cfg"
            cfg.write_text(built.text)
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
                               stderr_log=log_dir / f"{os.getpid()}-member-{slot}.stderr.log")
        return make

    return [factory_for(i) for i in range(len(per_member))]
