"""Per-device KataGo configs: ``katapool config generate``.

Sizing follows the device class: tensor-core GPUs get FP16, batch size grows with GPU memory,
CPU-class devices (Eigen, or OpenCL on the CPU through PoCL) get one thread per core and small
batches, and the NN cache is sized from a RAM budget shared by all members on the machine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from katapool import paths
from katapool.config.katago_keys import close_keys, is_known_key
from katapool.config.presets import Preset
from katapool.config.profile import Profile
from katapool.config.settings import KataGoSettings, Mode, settings_error
from katapool.devices.model import Device, DeviceKind, DeviceReport
from katapool.engine.backend import Backend
from katapool.errors import ConfigError

# KataGo's NN cache costs about 1.5-3 KB an entry; size for the upper end.
NN_CACHE_BYTES_PER_ENTRY = 3072
MIN_CACHE_POW, MAX_CACHE_POW = 10, 28
DEFAULT_MAX_VISITS = 500


@dataclass
class ConfigRequest:
    mode: Mode
    backend: Backend
    devices: list[Device]
    preset: Preset
    ram_mib: int
    members_on_machine: int = 1
    log_dir: Path | None = None
    home_dir: Path | None = None
    opencl_tuner_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    opencl_devices: list[Device] = field(default_factory=list)
    profile: Profile | None = None  # measured values (katapool prepare --measure)


def cache_size_power(ram_mib: int, preset: Preset, members: int = 1) -> int:
    budget_mib = min(ram_mib * preset.ram_budget_fraction, preset.ram_budget_max_mib)
    per_member = budget_mib * (1 << 20) / max(members, 1)
    entries = max(per_member / NN_CACHE_BYTES_PER_ENTRY, 1.0)
    return max(MIN_CACHE_POW, min(MAX_CACHE_POW, int(math.floor(math.log2(entries)))))


def _gpu_batch(device: Device, preset: Preset) -> int:
    mem = device.memory_mib or 0
    if mem and mem < 8 * 1024:
        return preset.gpu_batch.small
    if mem and mem < 24 * 1024:
        return preset.gpu_batch.medium
    return preset.gpu_batch.large if mem else preset.gpu_batch.medium


def _is_cpu_class(device: Device, backend: Backend) -> bool:
    return backend is Backend.EIGEN or device.kind is DeviceKind.CPU or device.is_cpu_like


def _engine_device_indices(req: ConfigRequest) -> list[int]:
    """Device indices as the engine's backend numbers them."""
    if req.backend is Backend.EIGEN:
        return [0]
    out: list[int] = []
    for dev in req.devices:
        if dev.kind is DeviceKind.CPU:
            if req.backend is Backend.OPENCL:
                cpu_cl = next((d for d in req.opencl_devices if d.is_cpu_like), None)
                if cpu_cl is None:
                    raise ConfigError("device cpu: this OpenCL engine sees no CPU OpenCL device "
                                      "(install pocl-opencl-icd) - or use an Eigen engine")
                out.append(cpu_cl.index)
                continue
            raise ConfigError(f"device cpu needs an Eigen or OpenCL engine, not {req.backend.label}")
        if dev.kind is DeviceKind.NVIDIA and req.backend is Backend.OPENCL:
            # OpenCL numbers devices across platforms; find this GPU there by name.
            match = next((d for d in req.opencl_devices
                          if dev.name.lower() in d.name.lower() and d.index not in out), None)
            if match is None:
                raise ConfigError(f"GPU {dev.index} ({dev.name}) is not visible to OpenCL")
            out.append(match.index)
            continue
        if dev.kind is DeviceKind.OPENCL and req.backend is not Backend.OPENCL:
            raise ConfigError(f"device {dev.spec} needs an OpenCL engine, not {req.backend.label}")
        out.append(cuda_index(dev.index) if dev.kind is DeviceKind.NVIDIA else dev.index)
    return out


def cuda_index(nvml_index: int) -> int:
    """CUDA's number for a GPU that NVML numbers ``nvml_index``.

    katapool's engines run with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (NVML's order); what remains
    is ``CUDA_VISIBLE_DEVICES``, which renumbers the GPUs it lists from 0.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible or not all(p.strip().isdigit() for p in visible.split(",")):
        return nvml_index
    order = [int(p) for p in visible.split(",")]
    if nvml_index not in order:
        raise ConfigError(f"GPU {nvml_index} is hidden by CUDA_VISIBLE_DEVICES={visible}")
    return order.index(nvml_index)


GTP_ONLY = {"numSearchThreads", "logAllGTPCommunication", "rules", "ponderingEnabled",
            "allowResignation", "resignThreshold", "resignConsecTurns"}
ANALYSIS_ONLY = {"numAnalysisThreads", "numSearchThreadsPerAnalysisThread",
                 "reportAnalysisWinratesAs"}


@dataclass(frozen=True)
class Origin:
    """Where one generated value came from: ``rule``, ``preset``, ``profile`` or
    ``override``, why, and the measured figures behind it (profiles)."""

    setting: str
    value: Any
    source: str
    why: str
    figures: dict[str, Any] = field(default_factory=dict)


EXPLAINED = ("useFP16", "nnMaxBatchSize", "numSearchThreads", "numAnalysisThreads",
             "numSearchThreadsPerAnalysisThread", "nnCacheSizePowerOfTwo")


def generate_settings(req: ConfigRequest) -> KataGoSettings:
    return generate_with_origins(req)[0]


def generate_with_origins(req: ConfigRequest) -> tuple[KataGoSettings, list[Origin]]:
    """The settings, and for each sized value (:data:`EXPLAINED`) where it came from."""
    if not req.devices:
        raise ConfigError("no device to generate a config for")
    primary = req.devices[0]
    cpu_class = _is_cpu_class(primary, req.backend)
    cores = primary.cores or 1
    why: dict[str, tuple[str, str]] = {}
    if cpu_class:
        batch = max(1, min(16, 2 * cores)) if req.backend is Backend.OPENCL else max(1, cores)
        threads = cores
        fp16: bool | str = False
        why["nnMaxBatchSize"] = ("rule", f"CPU-class device with {cores} cores: "
                                 + ("2 per core, at most 16" if req.backend is Backend.OPENCL
                                    else "one per core"))
        why["numSearchThreads"] = ("rule", f"CPU-class device: one thread per core ({cores})")
        why["useFP16"] = ("rule", "CPU-class device: FP16 does not apply")
    else:
        batch = _gpu_batch(primary, req.preset) * len(req.devices)
        threads = max(1, int(round(batch * req.preset.search_threads_per_batch)))
        fp16 = primary.tensor_cores if primary.kind is DeviceKind.NVIDIA else "auto"
        mem = f"{primary.memory_mib} MiB" if primary.memory_mib else "unknown memory"
        why["nnMaxBatchSize"] = ("rule", f"GPU with {mem}: preset {req.preset.name}'s batch "
                                 f"for that size x {len(req.devices)} device(s)")
        why["numSearchThreads"] = ("rule", f"batch x {req.preset.search_threads_per_batch} "
                                   f"(preset {req.preset.name})")
        why["useFP16"] = ("rule", "NVIDIA GPU with compute capability "
                          f"{'>=' if primary.tensor_cores else '<'} 7.0 (tensor cores)"
                          if primary.kind is DeviceKind.NVIDIA
                          else "not an NVIDIA GPU: the engine decides")
    per_position = max(1, min(req.preset.analysis_search_threads, threads))
    cache_pow = cache_size_power(req.ram_mib, req.preset, req.members_on_machine)
    why["nnCacheSizePowerOfTwo"] = ("rule", f"RAM budget of preset {req.preset.name} "
                                    f"({req.ram_mib} MiB RAM, {req.members_on_machine} "
                                    "member(s))")
    values: dict[str, Any] = {
        "mode": req.mode,
        "backend": req.backend,
        "logDir": str(req.log_dir or paths.data_dir() / "logs" / req.mode.value),
        "homeDataDir": str(req.home_dir or paths.katago_home()),
        "devices": _engine_device_indices(req) if req.backend is not Backend.EIGEN else [0],
        "eigenThreads": cores if req.backend is Backend.EIGEN else None,
        "useFP16": fp16,
        "nnMaxBatchSize": batch,
        "nnCacheSizePowerOfTwo": cache_pow,
        "nnMutexPoolSizePowerOfTwo": max(8, cache_pow - 6),
        "numSearchThreads": threads,
        "numAnalysisThreads": max(1, threads // per_position),
        "numSearchThreadsPerAnalysisThread": per_position,
        "maxVisits": DEFAULT_MAX_VISITS,
    }
    if req.backend is Backend.OPENCL and req.opencl_tuner_file is not None:
        values["openclTunerFile"] = str(req.opencl_tuner_file)
    values.update(req.preset.settings)
    for key in req.preset.settings:
        why[key] = ("preset", f"set by preset {req.preset.name}")
    figures: dict[str, dict[str, Any]] = {}
    measured: dict[str, Any] = {}
    if req.profile is not None:
        for decision in req.profile.decisions:
            measured[decision.setting] = decision.value
            why[decision.setting] = ("profile", decision.reason)
            figures[decision.setting] = decision.figures
    values.update(measured)  # a measurement beats any rule or preset's guess
    if "numSearchThreads" in measured:
        measured_threads = int(measured["numSearchThreads"])
        per = max(1, min(req.preset.analysis_search_threads, measured_threads))
        values["numSearchThreadsPerAnalysisThread"] = per
        values["numAnalysisThreads"] = max(1, measured_threads // per)
    if cpu_class and values.get("useFP16") is not False and "useFP16" not in measured:
        values["useFP16"] = False  # a GPU preset on a CPU-class device: FP16 does not apply
        why["useFP16"] = ("rule", "CPU-class device: FP16 does not apply")
    for key in ("numAnalysisThreads", "numSearchThreadsPerAnalysisThread"):
        source = why["numSearchThreads"][0] if key not in req.preset.settings else "preset"
        why.setdefault(key, (source, f"numSearchThreads {values['numSearchThreads']} split "
                         f"{values['numSearchThreadsPerAnalysisThread']} per position "
                         f"(preset {req.preset.name}: at most "
                         f"{req.preset.analysis_search_threads})"))
    wrong_mode = GTP_ONLY if req.mode is Mode.ANALYSIS else ANALYSIS_ONLY
    misplaced = sorted(set(req.overrides) & wrong_mode)
    if misplaced:
        raise ConfigError(f"{', '.join(misplaced)} does not apply to {req.mode.value} mode")
    values = apply_overrides(values, req.overrides)
    for key in req.overrides:
        beaten = f" (the measured profile says {measured[key]})" if key in measured else ""
        why[key] = ("override", f"set on the command line{beaten}")
        figures.pop(key, None)
    try:
        settings = KataGoSettings.model_validate(values)
    except ValidationError as exc:
        raise settings_error(exc) from None
    # numSearchThreads stays in analysis mode too: it is what the analysis threads split.
    shown = [k for k in EXPLAINED if not (req.mode is Mode.GTP and k in ANALYSIS_ONLY)]
    origins = [Origin(k, getattr(settings, k), *why.get(k, ("rule", "katapool's default")),
                      figures=figures.get(k, {})) for k in shown]
    return settings, origins


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``key=value`` overrides: known settings replace computed ones, others go to ``extra``."""
    known = set(KataGoSettings.model_fields) - {"extra", "mode", "backend"}
    out = dict(values)
    extra = dict(out.get("extra", {}))
    for key, value in overrides.items():
        if key in known:
            out[key] = value
        elif not is_known_key(key):
            hint = close_keys(key)
            raise ConfigError(f"invalid KataGo key {key!r}: not a setting KataGo reads"
                              + (f" (did you mean {' or '.join(hint)}?)" if hint else ""))
        else:
            extra[key] = value
    if extra:
        out["extra"] = extra
    return out


def parse_override_pairs(pairs: list[str]) -> dict[str, str]:
    """``-set key=value`` items, also accepting KataGo's ``key=value, key=value`` form."""
    out: dict[str, str] = {}
    for chunk in pairs:
        for item in (s.strip() for s in chunk.split(",")):
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"bad override {item!r}: expected key=value")
            out[key.strip()] = value.strip()
    return out


def header_for(req: ConfigRequest, report: DeviceReport | None = None,
               profile_file: Path | None = None) -> str:
    devs = ", ".join(f"{d.spec} ({d.name})" for d in req.devices)
    text = (
        f"Generated by katapool for {req.mode.value} on {req.backend.label}.\n"
        f"Devices: {devs}\nPreset: {req.preset.name} - {req.preset.description}"
    )
    if req.profile is not None:
        text += (f"\nMeasured profile: {profile_file} (measured "
                 f"{req.profile.measured_at:%Y-%m-%d %H:%M} UTC)")
        for d in req.profile.decisions:
            overridden = " (overridden on the command line)" if d.setting in req.overrides else ""
            text += f"\n  {d.setting} = {_cfg_value(d.value)}: {_short(d.reason)}{overridden}"
    return text


def _cfg_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _short(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
