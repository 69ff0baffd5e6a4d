"""Everything katapool can compute on, and finding the devices a ``--device`` spec names."""

from __future__ import annotations

import os
from pathlib import Path

from katapool.devices.model import Device, DeviceKind, DeviceReport
from katapool.devices.nvidia import list_nvidia_gpus
from katapool.devices.spec import parse_devices
from katapool.errors import ConfigError, KatapoolError

_CPU_HINTS = ("pthread", "cpu", "pocl", "llvmpipe", "intel(r) core", "amd epyc", "ryzen", "xeon")


def cpu_device() -> Device:
    import psutil  # here: importing this package must stay cheap (devices.fingerprint)

    physical = psutil.cpu_count(logical=False) or 0
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    name = _cpu_name() or "CPU"
    return Device(DeviceKind.CPU, 0, name, psutil.virtual_memory().total // (1 << 20),
                  cores=max(physical, 1) if physical else logical, is_cpu_like=True)


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def opencl_devices(katago: Path | None, model: Path | None,
                   fresh: bool = False) -> tuple[list[Device], str | None]:
    """OpenCL devices as KataGo enumerates them (needs an OpenCL engine and any network);
    ``fresh``: asked now, not taken from an earlier process's answer."""
    if katago is None or model is None:
        return [], "no OpenCL KataGo engine and network to ask"
    from katapool.engine.probe import list_opencl_devices

    try:
        found = list_opencl_devices(katago, model, fresh=fresh)
    except KatapoolError as exc:
        return [], str(exc)
    cores = cpu_device().cores
    return [
        Device(DeviceKind.OPENCL, d.index, d.name,
               is_cpu_like=any(h in d.name.lower() for h in _CPU_HINTS),
               cores=cores if any(h in d.name.lower() for h in _CPU_HINTS) else None)
        for d in found
    ], None


def discover_devices(katago: Path | None = None, model: Path | None = None,
                     opencl: bool = True) -> DeviceReport:
    import psutil

    report = DeviceReport(cpu=cpu_device(), ram_mib=psutil.virtual_memory().total // (1 << 20))
    report.nvidia, why = list_nvidia_gpus()
    if why and not report.nvidia:
        report.notes.append(f"no NVIDIA GPU: {why}")
    if opencl:
        report.opencl, why = opencl_devices(katago, model)
        if why and not report.opencl:
            report.notes.append(f"no OpenCL device listed: {why}")
    return report


def parse_device_spec(spec: str, report: DeviceReport) -> list[Device]:
    """The devices ``spec`` names (the syntax of :mod:`katapool.devices.spec`), found in
    ``report``; ``auto`` is the best one found. Every device must exist on this machine."""
    refs = parse_devices(spec)
    if refs is None:
        if report.nvidia:
            return [report.nvidia[0]]
        if report.opencl:
            return [report.opencl[0]]
        assert report.cpu is not None
        return [report.cpu]
    out: list[Device] = []
    for ref in refs:
        if ref.kind is DeviceKind.CPU:
            assert report.cpu is not None
            out.append(report.cpu)
            continue
        pool = report.nvidia if ref.kind is DeviceKind.NVIDIA else report.opencl
        found = next((d for d in pool if d.index == ref.index), None)
        if found is None:
            have = ", ".join(d.spec for d in report.all) or "none"
            raise ConfigError(f"device {ref.text or ref.spec!r} not found on this machine (have: {have})")
        out.append(found)
    return out
