"""What device discovery would find, told cheaply.

Listing NVIDIA GPUs (NVML) or OpenCL devices (KataGo's tuner) costs from a tenth of a second
to seconds; these fingerprints read a few small files and environment variables instead, and
change whenever the answer may have: another GPU or driver, an OpenCL runtime installed or
upgraded, a variable that hides devices. Caches of discovery results keep an entry only
while the fingerprint it was made under is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

# Variables that change which devices a driver shows, or how it numbers them.
_NVIDIA_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES")
_OPENCL_ENV = ("OCL_ICD_VENDORS", "OCL_ICD_FILENAMES", "OPENCL_VENDOR_PATH", "POCL_DEVICES",
               "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
               *_NVIDIA_ENV)
_ICD_DIRS = (Path("/etc/OpenCL/vendors"),)
_NVIDIA_PROC = Path("/proc/driver/nvidia")


def file_stamp(path: Path) -> tuple[int, int] | None:
    """Size and mtime of ``path`` (following links), or None if it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _read(path: Path, limit: int = 1 << 16) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode(errors="replace")
    except OSError:
        return None


def _digest(facts: object) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def opencl_fingerprint() -> str:
    """The OpenCL runtimes (ICD files, and the libraries they name by path) and the variables
    that filter their devices."""
    facts: list[object] = [{k: os.environ.get(k) for k in _OPENCL_ENV}]
    vendors = os.environ.get("OCL_ICD_VENDORS")
    dirs = [Path(vendors)] if vendors and Path(vendors).is_dir() else list(_ICD_DIRS)
    for directory in dirs:
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            facts.append([str(directory), None])
            continue
        for entry in entries:
            library = (_read(entry, 4096) or "").strip()
            facts.append([str(entry), library, file_stamp(entry),
                          file_stamp(Path(library)) if library.startswith("/") else None])
    return _digest(facts)


def nvidia_fingerprint() -> str:
    """The NVIDIA driver and its GPUs as the kernel lists them, and ``nvidia-smi`` on PATH
    (what katapool's GPU listing asks: NVML, which needs that driver, then ``nvidia-smi``)."""
    facts: list[object] = [{k: os.environ.get(k) for k in _NVIDIA_ENV}]
    facts.append(_read(_NVIDIA_PROC / "version"))
    try:
        gpus = sorted((_NVIDIA_PROC / "gpus").iterdir())
    except OSError:
        gpus = []
    facts += [[gpu.name, _read(gpu / "information")] for gpu in gpus]
    smi = shutil.which("nvidia-smi")
    facts.append([smi, file_stamp(Path(smi)) if smi else None])
    if not sys.platform.startswith("linux") and sys.platform != "darwin":
        # No kernel listing to read elsewhere: ask NVML (slower, still correct).
        from katapool.devices.nvidia import list_nvidia_gpus

        facts.append([repr(d) for d in list_nvidia_gpus()[0]])
    return _digest(facts)


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def machine_fingerprint(opencl: bool = True) -> str:
    """CPU, memory, NVIDIA GPUs and (``opencl``) OpenCL runtimes: what a generated config is
    sized from."""
    return _digest([os.cpu_count(), _cpu_name(), _ram_bytes(), nvidia_fingerprint(),
                    opencl_fingerprint() if opencl else None])
