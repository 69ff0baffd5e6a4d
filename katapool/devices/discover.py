"""Everything katapool can compute on, and parsing of ``--device`` specs."""

from __future__ import annotations

import os
from pathlib import Path

from katapool.devices.model import Device, DeviceKind, DeviceReport
from katapool.devices.nvidia import list_nvidia_gpus
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
    """``auto``, ``cpu``, ``gpu:N`` / ``nvidia:N`` / ``cuda:N``, ``opencl:N``, or a list of those
    (or of bare GPU indices: ``0,1``). Every device must exist on this machine."""
    spec = spec.strip().lower()
    if spec in ("", "auto"):
        if report.nvidia:
            return [report.nvidia[0]]
        if report.opencl:
            return [report.opencl[0]]
        assert report.cpu is not None
        return [report.cpu]
    out: list[Device] = []
    for part in (p.strip() for p in spec.split(",")):
        if part == "cpu":
            assert report.cpu is not None
            out.append(report.cpu)
            continue
        kind, _, idx_text = part.rpartition(":")
        if not kind:
            kind = "gpu"
        if not idx_text.isdigit():
            raise ConfigError(f"bad device {part!r}: use auto, cpu, gpu:N or opencl:N")
        idx = int(idx_text)
        if kind in ("gpu", "nvidia", "cuda", "trt"):
            pool = report.nvidia
        elif kind == "opencl":
            pool = report.opencl
        else:
            raise ConfigError(f"bad device {part!r}: unknown kind {kind!r} (use cpu, gpu, opencl)")
        found = next((d for d in pool if d.index == idx), None)
        if found is None:
            have = ", ".join(d.spec for d in report.all) or "none"
            raise ConfigError(f"device {part!r} not found on this machine (have: {have})")
        out.append(found)
    if len({d.kind for d in out}) > 1:
        raise ConfigError(f"devices {spec!r} mix kinds; one config drives one kind of device")
    return out
