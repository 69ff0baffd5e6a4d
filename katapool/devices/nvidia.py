"""NVIDIA GPUs through NVML (``nvidia-ml-py``), falling back to ``nvidia-smi``."""

from __future__ import annotations

import shutil
import subprocess

from katapool.devices.model import Device, DeviceKind


def list_nvidia_gpus() -> tuple[list[Device], str | None]:
    """The GPUs and, when none could be listed, why."""
    gpus, why = _from_nvml()
    if gpus:
        return gpus, None
    smi, why_smi = _from_nvidia_smi()
    if smi:
        return smi, None
    return [], why_smi or why


def _from_nvml() -> tuple[list[Device], str | None]:
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses vary by driver state
        return [], f"NVML unavailable ({exc})"
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total // (1 << 20)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            out.append(Device(DeviceKind.NVIDIA, i, name, int(mem), (int(major), int(minor))))
        return out, None
    finally:
        pynvml.nvmlShutdown()


def _from_nvidia_smi() -> tuple[list[Device], str | None]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return [], "no NVIDIA driver (nvidia-smi not found)"
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi failed ({exc})"
    if proc.returncode != 0:
        return [], f"nvidia-smi failed: {proc.stderr.strip() or proc.stdout.strip()}"
    return parse_nvidia_smi(proc.stdout), None


def parse_nvidia_smi(text: str) -> list[Device]:
    out = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        idx, name, mem, cap = parts[:4]
        try:
            major, minor = (int(x) for x in cap.split("."))
            capability: tuple[int, int] | None = (major, minor)
        except ValueError:
            capability = None
        out.append(Device(DeviceKind.NVIDIA, int(idx), name,
                          int(float(mem)) if mem.replace(".", "").isdigit() else None, capability))
    return out
