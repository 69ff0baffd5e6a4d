"""Advice after an install: on a machine without a GPU, an OpenCL engine computes on the CPU
through PoCL, where KataGo's Eigen backend is many times faster (docs/performance.md)."""

from __future__ import annotations

import platform

from katapool.engine.backend import Backend
from katapool.engine.build_source import DEFAULT_VERSION
from katapool.engine.manifest import EngineRecord, load_manifest

# Eigen (AVX2 build) over OpenCL on PoCL for g170 b6c96 on a 2-core AMD EPYC, measured by both
# `katapool bench` and `katago benchmark` (docs/performance.md).
MEASURED = "13x faster for a small network on a 2-core AMD EPYC"


def eigen_ways() -> str:
    """How this machine can get an Eigen engine: KataGo's release zip where one exists
    (Linux x86-64), else a build from source."""
    build = "`katapool engine build --backend eigen` (compiles KataGo here: 4-7 minutes on 2 " \
        "cores)"
    if platform.machine().lower() in ("x86_64", "amd64"):
        return (f"`katapool engine install --from release --version {DEFAULT_VERSION} --backend "
                f"eigen` (KataGo's release, from GitHub) or {build}")
    return build


def on_cpu_only(record: EngineRecord) -> bool:
    """Whether ``record`` is an OpenCL engine that reaches nothing but the CPU (no NVIDIA GPU,
    every OpenCL device CPU-like); False when the devices cannot be told."""
    from katapool.devices.discover import opencl_devices
    from katapool.devices.nvidia import list_nvidia_gpus

    if record.backend is not Backend.OPENCL or list_nvidia_gpus()[0]:
        return False
    # Listing OpenCL devices takes a network (any will do): the engine's, or another's.
    model = record.model or next((e.model for e in load_manifest().engines
                                  if e.model and e.model.is_file()), None)
    if model is None:
        return False
    devices, _ = opencl_devices(record.path, model)
    return bool(devices) and all(d.is_cpu_like for d in devices)


def cpu_only_hint(record: EngineRecord) -> str | None:
    """A hint when ``record`` is an OpenCL engine that can only reach the CPU; None otherwise
    (a GPU exists, an Eigen engine is already installed, or the devices cannot be told)."""
    if record.backend is not Backend.OPENCL:
        return None
    if any(e.backend is Backend.EIGEN for e in load_manifest().engines):
        return None
    if not on_cpu_only(record):
        return None
    return (f"no GPU here: {record.name} computes on the CPU through OpenCL (PoCL), where "
            f"KataGo's Eigen backend is much faster ({MEASURED}). Get one with {eigen_ways()}; "
            "`katapool bench` compares them.")
