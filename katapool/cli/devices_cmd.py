"""``katapool devices``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from rich.table import Table

from katapool.cli.common import add_engine_args, out
from katapool.devices import discover_devices
from katapool.devices.model import Device
from katapool.engine.backend import Backend
from katapool.engine.discovery import resolve_engine, resolve_model
from katapool.engine.probe import probe_version
from katapool.errors import KatapoolError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("devices", help="list GPUs, OpenCL devices and CPU")
    add_engine_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)


def cmd_devices(args: argparse.Namespace) -> int:
    katago = model = None
    notes = []
    try:
        resolved = resolve_engine(args.katago)
        info = probe_version(resolved.path)
        if info.backend is Backend.OPENCL:
            katago = resolved.path
            model = resolve_model(args.model, resolved)
    except KatapoolError as exc:
        notes.append(f"OpenCL devices not listed: {exc}")
    report = discover_devices(katago, model, opencl=katago is not None)
    notes += report.notes
    if args.json:
        out.print(json.dumps({
            "nvidia": [_dev(d) for d in report.nvidia],
            "opencl": [_dev(d) for d in report.opencl],
            "cpu": _dev(report.cpu) if report.cpu else None,
            "ram_mib": report.ram_mib,
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
    if not report.nvidia and all(d.is_cpu_like for d in report.opencl):
        out.print("No GPU found: KataGo will run on the CPU (Eigen, or OpenCL through PoCL).")
    for note in notes:
        out.print(f"[dim]{note}[/]")
    return 0


def _dev(d: Device) -> dict[str, object]:
    data: dict[str, object] = asdict(d)
    data["spec"] = d.spec
    return data
