"""``katapool devices``."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

from katapool.cli.common import add_engine_args, out
from katapool.devices import discover_devices
from katapool.devices.model import Device, DeviceReport
from katapool.engine.backend import Backend
from katapool.engine.discovery import ResolvedEngine, resolve_engine, resolve_model
from katapool.engine.manifest import load_manifest
from katapool.engine.probe import EngineInfo, probe_version
from katapool.errors import KatapoolError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("devices", help="list GPUs, OpenCL devices, CPU and the engines for each",
                       description="The devices of this machine and, for every installed "
                       "engine (or the one --katago names), the devices it can compute on.")
    add_engine_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", action="store_true",
                   help="show the measured profiles per device (`katapool prepare --measure`) "
                        "and whether each still applies")
    p.set_defaults(func=cmd_devices)


@dataclass
class EngineRow:
    name: str
    path: Path
    is_default: bool
    info: EngineInfo | None
    problem: str | None
    resolved: ResolvedEngine


def _engines(args: argparse.Namespace) -> tuple[list[EngineRow], list[str]]:
    """The engine named by --katago (or $KATAPOOL_KATAGO), else every installed one (a broken
    default among them, with its problem: the others still list their devices). Without one
    that runs the devices are still listed (with a note); but an engine named by --katago that
    is missing or does not run is an error, as in every other command."""
    notes: list[str] = []
    candidates: list[tuple[str, ResolvedEngine, bool]] = []
    if args.katago:
        chosen = resolve_engine(args.katago)
        name = chosen.record.name if chosen.record else str(chosen.path)
        return [EngineRow(name, chosen.path, True, probe_version(chosen.path), None, chosen)], notes
    try:
        if os.environ.get("KATAPOOL_KATAGO"):
            chosen = resolve_engine(None)
            candidates = [(chosen.record.name if chosen.record else str(chosen.path), chosen,
                           True)]
        else:
            manifest = load_manifest()
            default = manifest.default_engine()
            candidates = [(r.name, ResolvedEngine(r.path, "manifest", r),
                           default is not None and r.name == default.name)
                          for r in manifest.engines]
            if not candidates:
                chosen = resolve_engine()  # katago on PATH
                candidates = [(str(chosen.path), chosen, True)]
    except KatapoolError as exc:
        notes.append(f"OpenCL devices not listed: {exc}")
    rows = []
    for name, resolved, is_default in candidates:
        try:
            rows.append(EngineRow(name, resolved.path, is_default, probe_version(resolved.path),
                                  None, resolved))
        except KatapoolError as exc:
            rows.append(EngineRow(name, resolved.path, is_default, None, str(exc), resolved))
    return rows, notes


def _runs_on(row: EngineRow, report: DeviceReport) -> list[str]:
    """The devices of this machine the engine can compute on."""
    if row.info is None:
        return []
    backend = row.info.backend
    if backend is Backend.EIGEN:
        return ["cpu"]
    if backend is Backend.OPENCL:
        return [d.spec for d in report.opencl]
    if backend in (Backend.CUDA, Backend.TENSORRT):
        return [d.spec for d in report.nvidia]
    return []


def cmd_devices(args: argparse.Namespace) -> int:
    katago = model = None
    # A network named by -model must be one, whether or not an OpenCL engine needs it.
    named_model = resolve_model(args.model) if args.model else None
    engines, notes = _engines(args)
    if args.profile:
        return _show_profiles(args, engines)
    # OpenCL devices are listed by asking an OpenCL engine: the default if it is one.
    lister = next((e for e in sorted(engines, key=lambda e: not e.is_default)
                   if e.info is not None and e.info.backend is Backend.OPENCL), None)
    if lister is not None:
        try:
            model = named_model or resolve_model(None, lister.resolved)
            katago = lister.path
        except KatapoolError as exc:
            notes.append(f"OpenCL devices not listed: {exc}")
    report = discover_devices(katago, model, opencl=katago is not None)
    notes += report.notes
    notes += [f"engine {e.name}: {e.problem}" for e in engines if e.problem]
    if args.json:
        out.print(json.dumps({
            "nvidia": [_dev(d) for d in report.nvidia],
            "opencl": [_dev(d) for d in report.opencl],
            "cpu": _dev(report.cpu) if report.cpu else None,
            "ram_mib": report.ram_mib,
            "engines": [{"name": e.name, "path": str(e.path), "default": e.is_default,
                         "version": e.info.version if e.info else None,
                         "backend": e.info.backend.value if e.info else None,
                         "devices": _runs_on(e, report)} for e in engines],
            "notes": notes,
        }, indent=2))
        return 0
    table = Table("device", "name", "memory", "compute capability", "notes")
    for d in report.nvidia:
        cc = ".".join(map(str, d.compute_capability)) if d.compute_capability else "?"
        table.add_row(d.spec, d.name, f"{d.memory_mib} MiB" if d.memory_mib else "?", cc,
                      "tensor cores: FP16" if d.tensor_cores else "FP32")
    for d in report.opencl:
        table.add_row(d.spec, d.name, "", "", "CPU device (e.g. PoCL)" if d.is_cpu_like else "")
    if report.cpu:
        table.add_row("cpu", report.cpu.name, f"{report.ram_mib} MiB RAM", "",
                      f"{report.cpu.cores} cores")
    out.print(table)
    if engines:
        etable = Table("", "engine", "version", "backend", "runs on")
        for e in engines:
            etable.add_row("*" if e.is_default else "", e.name, e.info.version if e.info else "?",
                           e.info.backend.label if e.info else "does not run",
                           ", ".join(_runs_on(e, report)) or "-")
        out.print(etable)
    if not report.nvidia and all(d.is_cpu_like for d in report.opencl):
        out.print("No GPU found: KataGo will run on the CPU (Eigen, or OpenCL through PoCL).")
    for note in notes:
        out.print(f"[dim]{note}[/]")
    return 0


def _show_profiles(args: argparse.Namespace, engines: list[EngineRow]) -> int:
    from katapool.config.profile import all_profiles, profile_status
    from katapool.devices.discover import cpu_device
    from katapool.devices.nvidia import list_nvidia_gpus

    stored = all_profiles()
    infos = [e.info for e in sorted(engines, key=lambda e: not e.is_default) if e.info]
    # No OpenCL listing (it needs a network and seconds): profile_status checks those
    # profiles by their driver stack.
    devices = [*list_nvidia_gpus()[0], cpu_device()]
    rows = []
    for path, profile in stored:
        if profile is None:
            rows.append({"file": str(path), "status": "unreadable"})
            continue
        rows.append({"file": str(path), "status": profile_status(profile, infos, devices),
                     **profile.model_dump(mode="json")})
    if args.json:
        out.print_json(json.dumps({"profiles": rows}))
        return 0
    if not rows:
        out.print("No measured profiles: run `katapool prepare --measure`.")
        return 0
    table = Table("device", "mode", "network", "useFP16", "nnMaxBatchSize", "numSearchThreads",
                  "measured", "status")
    for path, profile in stored:
        if profile is None:
            table.add_row("?", "?", path.name, "", "", "", "", "unreadable")
            continue
        values = profile.values()
        table.add_row(f"{profile.device.spec} ({profile.device.name})", profile.mode.value,
                      profile.network.name, str(values.get("useFP16", "")).lower(),
                      str(values.get("nnMaxBatchSize", "")),
                      str(values.get("numSearchThreads", "")),
                      f"{profile.measured_at:%Y-%m-%d %H:%M}",
                      profile_status(profile, infos, devices))
    out.print(table)
    return 0


def _dev(d: Device) -> dict[str, object]:
    data: dict[str, object] = asdict(d)
    data["spec"] = d.spec
    return data
