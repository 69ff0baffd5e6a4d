"""``katapool doctor``: what this machine has and lacks for katapool, one line each.

Every check is fast and local (no network, no engine run beyond ``katago version`` and the
OpenCL device listing, each a second or two), so it can run first when something is wrong.
A check is ``ok``, a ``problem`` (with the command that fixes it) or ``info`` (a fact that
is fine either way, such as no daemon running).
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from katapool import paths
from katapool.devices.discover import cpu_device, opencl_devices
from katapool.devices.model import Device
from katapool.devices.nvidia import list_nvidia_gpus
from katapool.engine.backend import Backend
from katapool.engine.diagnose import pocl_cache_problem
from katapool.engine.discovery import (
    ResolvedEngine,
    reinstall_command,
    resolve_engine,
    resolve_model,
)
from katapool.engine.probe import EngineInfo, probe_version
from katapool.engine.tuning import load_index
from katapool.errors import KatapoolError
from katapool.server import control
from katapool.server.state import StateDir, read_pid

Status = Literal["ok", "problem", "info"]
INSTALL = "katapool engine install"


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass
class _Found:
    """What earlier checks learnt, for the later ones."""

    resolved: ResolvedEngine | None = None
    info: EngineInfo | None = None
    model: Path | None = None
    nvidia: list[Device] = field(default_factory=list)
    opencl: list[Device] = field(default_factory=list)


def run_checks() -> list[Check]:
    found = _Found()
    checks: list[Check] = []
    steps: list[Callable[[_Found], list[Check]]] = [
        _engine, _network, _devices, _opencl, _cuda, _tensorrt, _mobile, _tuning, _profiles,
        _daemon, _permissions]
    for step in steps:
        checks += step(found)
    return checks


def _engine(found: _Found) -> list[Check]:
    try:
        resolved = found.resolved = resolve_engine()
    except KatapoolError as exc:
        return [Check("engine", "problem", str(exc), exc.fix or INSTALL)]
    try:
        found.info = probe_version(resolved.path, fresh=True)  # a health check: asked now
    except KatapoolError as exc:
        return [Check("engine", "problem", str(exc), exc.fix or _engine_fix(resolved))]
    info = found.info
    return [Check("engine", "ok", f"KataGo {info.version} ({info.backend.label} backend) at "
                  f"{info.path} (from {found.resolved.origin})")]


def _engine_fix(resolved: ResolvedEngine) -> str:
    """For an engine found but broken: the way back to the engine the user chose, not a bare
    install of another one."""
    if resolved.origin == "environment":
        return "point KATAPOOL_KATAGO at a KataGo binary, or unset it"
    if resolved.record is not None:
        name = resolved.record.name
        return f"{reinstall_command(resolved.record)}, or katapool engine remove {name}"
    return f"{INSTALL} (or put a working katago first on PATH)"


def _network(found: _Found) -> list[Check]:
    if found.resolved is None:
        return [Check("network", "info", "not checked: no engine")]
    try:
        found.model = resolve_model(None, found.resolved)
    except KatapoolError as exc:
        return [Check("network", "problem", str(exc),
                      "pass -model FILE.bin.gz (or set KATAPOOL_MODEL)")]
    return [Check("network", "ok", f"default network {found.model}")]


def _devices(found: _Found) -> list[Check]:
    found.nvidia, why_nvidia = list_nvidia_gpus()
    why_opencl = None
    if found.info is not None and found.info.backend is Backend.OPENCL:
        found.opencl, why_opencl = opencl_devices(found.info.path, found.model)
    cpu = cpu_device()
    names = [f"{d.spec} ({d.name})" for d in (*found.nvidia, *found.opencl)]
    names.append(f"cpu ({cpu.name}, {cpu.cores} cores)")
    text = ", ".join(names)
    if found.info is not None and found.info.backend is Backend.OPENCL and not found.opencl:
        fix = ("set POCL_CACHE_DIR to a writable folder, or run with a writable HOME"
               if pocl_cache_problem() else "install an OpenCL driver (see the opencl line)")
        return [Check("devices", "problem", f"{text}; the OpenCL engine sees no device: "
                      f"{why_opencl}", fix)]
    return [Check("devices", "ok", text + (f" (no NVIDIA GPU: {why_nvidia})"
                                           if why_nvidia and not found.nvidia else ""))]


def _opencl(found: _Found) -> list[Check]:
    vendors = os.environ.get("OCL_ICD_VENDORS") or "/etc/OpenCL/vendors"
    icds = sorted(Path(p).name for p in glob.glob(os.path.join(vendors, "*.icd")))
    loader = ctypes.util.find_library("OpenCL")
    needed = found.info is not None and found.info.backend is Backend.OPENCL
    fix = ("install an OpenCL loader and driver: apt install ocl-icd-libopencl1 and "
           "pocl-opencl-icd (CPU) or your GPU vendor's OpenCL ICD")
    if loader and icds:
        pocl = " (PoCL: OpenCL on the CPU)" if any("pocl" in i.lower() for i in icds) else ""
        return [Check("opencl", "ok", f"loader {loader}, drivers {', '.join(icds)}{pocl}")]
    missing = "no OpenCL loader (libOpenCL)" if not loader else f"no OpenCL driver in {vendors}"
    if needed:
        return [Check("opencl", "problem", f"{missing}: the OpenCL engine cannot run", fix)]
    return [Check("opencl", "info", missing + _unneeded(found))]


def _cuda(found: _Found) -> list[Check]:
    needed = found.info is not None and found.info.backend in (Backend.CUDA, Backend.TENSORRT)
    if found.nvidia:
        return [Check("cuda", "ok", f"NVIDIA driver answers: {len(found.nvidia)} GPU(s)")]
    if needed:
        assert found.info is not None
        return [Check("cuda", "problem", f"the {found.info.backend.label} engine needs an NVIDIA "
                      "GPU and none was found", "install the NVIDIA driver (nvidia-smi must "
                      f"work), or an engine for this machine: {INSTALL}")]
    return [Check("cuda", "info", "no NVIDIA GPU or driver" + _unneeded(found))]


def _unneeded(found: _Found) -> str:
    return f" (the {found.info.backend.label} engine does not need it)" if found.info else ""


def _tensorrt(found: _Found) -> list[Check]:
    # Only `model build-trt` and `bench` use the Python package; a TensorRT engine build of
    # KataGo carries its own libraries.
    if importlib.util.find_spec("tensorrt") is None:
        return [Check("tensorrt", "info", "Python package not installed (only `katapool model "
                      "build-trt` and `katapool bench` use it)", "pip install tensorrt")]
    try:
        version = importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    return [Check("tensorrt", "ok", f"Python package tensorrt {version}")]


def _mobile(found: _Found) -> list[Check]:
    """The optional exporters for apps: information, never a problem."""
    checks = []
    for name, modules, extra, command in (
            ("tflite", ("tflite", "flatbuffers", "ai_edge_litert"), "tflite", "export-tflite"),
            ("coreml", ("coremltools",), "coreml", "export-coreml")):
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            checks.append(Check(name, "info", f"not installed (only `katapool model {command}` "
                                f"uses it: {', '.join(missing)})",
                                f"pip install 'katapool[{extra}]'"))
        else:
            checks.append(Check(name, "ok", f"`katapool model {command}` available"))
    return checks


def _tuning(found: _Found) -> list[Check]:
    info = found.info
    if info is None:
        return [Check("tuning", "info", "not checked: no engine")]
    if info.backend is Backend.OPENCL:
        if not found.opencl:
            return [Check("tuning", "info", "not checked: no OpenCL device")]
        index = load_index()
        checks = []
        for dev in found.opencl:
            best = index.best(dev.name, info.version)
            label = f"OpenCL {dev.spec} ({dev.name})"
            damaged = index.damaged(dev.name, info.version)
            if damaged and (best is None or best.kind == "reference"):
                checks.append(Check("tuning", "problem", f"{label}: tuning file {damaged[0]} "
                                    "is cut short (not used: engines start untuned)",
                                    "katapool prepare"))
            elif best is None:
                checks.append(Check("tuning", "problem", f"{label}: not prepared (KataGo would "
                                    "run untuned)", "katapool prepare"))
            elif best.kind == "reference":
                checks.append(Check("tuning", "info", f"{label}: fast-start reference "
                                    "parameters only (full speed needs a full tune)",
                                    "katapool prepare"))
            else:
                checks.append(Check("tuning", "ok", f"{label}: fully tuned "
                                    f"({best.board_size}x{best.board_size}, {best.file})"))
        return checks
    if info.backend is Backend.TENSORRT:
        cache = paths.katago_home() / "trtcache"
        plans = list(cache.iterdir()) if cache.is_dir() else []
        if not plans:
            return [Check("tuning", "problem", "no TensorRT plans cached: the first start "
                          "builds them (minutes)", "katapool prepare")]
        return [Check("tuning", "ok", f"{len(plans)} TensorRT plan file(s) in {cache}")]
    return [Check("tuning", "info", f"nothing to prepare for the {info.backend.label} backend")]


def _profiles(found: _Found) -> list[Check]:
    # Settings measured per device and network by `katapool prepare --measure`.
    from katapool.config.profile import all_profiles, profile_status

    stored = all_profiles()
    where = paths.profiles_dir()
    if not stored:
        return [Check("profiles", "info", f"no measured profiles in {where} (measure with "
                      "`katapool prepare --measure`)")]
    devices = [*found.nvidia, *found.opencl, cpu_device()]
    engines = [found.info] if found.info else []
    rows, stale = [], 0
    for path, profile in stored:
        if profile is None:
            stale += 1
            rows.append(f"{path.name}: unreadable")
            continue
        status = profile_status(profile, engines, devices)
        stale += status != "current"
        values = ", ".join(f"{k} {str(v).lower()}" for k, v in profile.values().items())
        rows.append(f"{profile.device.spec} {profile.mode.value} {profile.network.name}: "
                    f"{values}" + ("" if status == "current" else f" ({status})"))
    detail = f"{len(stored)} measured profile(s) in {where}, {stale} stale: " + "; ".join(rows)
    if stale:  # not a fault: configs fall back to the rules; re-measuring restores them
        return [Check("profiles", "info", detail + " (re-measure: katapool prepare --measure)")]
    return [Check("profiles", "ok", detail)]


def _daemon(found: _Found) -> list[Check]:
    state = StateDir.default()
    pid = read_pid(state.pidfile)
    socket = state.current_socket()
    try:
        status = control.request(socket, "katapool_status", timeout=2)
    except control.DaemonNotRunning:
        if pid is not None:
            return [Check("daemon", "problem", f"pid {pid} runs but nothing listens on "
                          f"{socket}", "katapool stop, then katapool start")]
        return [Check("daemon", "info", f"not running (socket {socket})")]
    except (KatapoolError, OSError, ValueError) as exc:
        return [Check("daemon", "problem", f"{socket} does not answer: {exc}",
                      "katapool logs; katapool stop, then katapool start")]
    members = [m for model in status.get("models", []) for m in model.get("members", [])]
    ready = sum(1 for m in members if m.get("state") == "ready")
    where = ", ".join(status.get("addresses", [])) or str(socket)
    return [Check("daemon", "ok", f"running (pid {status.get('pid')}), {ready}/{len(members)} "
                  f"members ready, on {where}")]


def _permissions(found: _Found) -> list[Check]:
    return [_writable("data dir", paths.data_dir(), "KATAPOOL_DATA_DIR"),
            _writable("cache dir", paths.cache_dir(), "KATAPOOL_CACHE_DIR"),
            _writable("state dir", StateDir.default().root, "KATAPOOL_DATA_DIR")]


def _writable(name: str, path: Path, env: str) -> Check:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Check(name, "problem", f"{path}: {existing} is not a directory",
                     f"remove {existing}, or set {env} to another place")
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check(name, "problem", f"{path}: {existing} is not writable",
                     f"chmod u+rwx {existing}, or set {env} to a writable place")
    note = "" if existing == path else " (made on first use)"
    return Check(name, "ok", f"{path} writable{note}")
