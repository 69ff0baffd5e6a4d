"""From "this engine, this device, this preset" to a config file on disk.

The one path every command takes to a runnable config: discover devices, pick the best
prepared OpenCL tuning (falling back to the reference parameters so the engine never
silently tunes for minutes), size the settings, validate, write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from katapool.config.generate import ConfigRequest, Origin, generate_with_origins, header_for
from katapool.config.presets import load_preset
from katapool.config.profile import Profile, find_profile
from katapool.config.settings import KataGoSettings, Mode
from katapool.devices import DeviceReport, discover_devices, parse_device_spec
from katapool.devices.model import Device
from katapool.engine.backend import Backend
from katapool.engine.probe import EngineInfo
from katapool.engine.tuning import TuningEntry, load_index, record_entry, write_reference_file
from katapool.errors import ConfigError


@dataclass
class BuiltConfig:
    settings: KataGoSettings
    text: str
    devices: list[Device]
    tuning: TuningEntry | None
    report: DeviceReport
    origins: list[Origin] = field(default_factory=list)
    profile: Profile | None = None
    profile_file: Path | None = None  # the profile used, or the one looked for
    notes: list[str] = field(default_factory=list)


def _opencl_name(device: Device | None, report: DeviceReport) -> str:
    """The name OpenCL (and so KataGo's tuner) gives ``device``; tuning is kept by it."""
    if device is None:
        return report.opencl[0].name if report.opencl else "unknown"
    if device.kind.value == "cpu":
        return next((o.name for o in report.opencl if o.is_cpu_like), device.name)
    return next((o.name for o in report.opencl if device.name.lower() in o.name.lower()),
                device.name)


def tuning_for(devices: list[Device], report: DeviceReport, info: EngineInfo) -> TuningEntry:
    """The best prepared tuning for the OpenCL device(s); the reference file if none."""
    name = _opencl_name(devices[0] if devices else None, report)
    best = load_index().best(name, info.version)
    if best is not None:
        return best
    entry = write_reference_file(name, info.version)
    record_entry(entry)
    return entry


def build_config(
    *,
    mode: Mode,
    info: EngineInfo,
    model: Path | None,
    device_spec: str = "auto",
    preset: str = "desktop",
    members_on_machine: int = 1,
    overrides: dict[str, Any] | None = None,
    log_dir: Path | None = None,
    report: DeviceReport | None = None,
    use_profile: bool = True,
) -> BuiltConfig:
    """``use_profile``: take the measured profile for this engine, device, network and mode
    when one matches (`katapool prepare --measure`); explicit ``overrides`` still win."""
    chosen_preset = load_preset(preset)
    if report is None:
        report = discover_devices(info.path, model, opencl=info.backend is Backend.OPENCL)
    if info.backend is Backend.EIGEN and device_spec in ("", "auto"):
        device_spec = "cpu"  # an Eigen build computes on the CPU whatever GPUs exist
    devices = parse_device_spec(device_spec, report)
    if info.backend is Backend.EIGEN and any(d.kind.value != "cpu" for d in devices):
        raise ConfigError(f"an Eigen (CPU) engine cannot use {device_spec}: use --device cpu")
    tuning = tuning_for(devices, report, info) if info.backend is Backend.OPENCL else None
    profile, profile_file, notes = None, None, []
    if use_profile and model is not None and len(devices) == 1:
        profile, profile_file, note = find_profile(info, devices[0], model, mode)
        notes += [note] if note else []
    req = ConfigRequest(
        mode=mode, backend=info.backend, devices=devices, preset=chosen_preset,
        ram_mib=report.ram_mib, members_on_machine=members_on_machine, log_dir=log_dir,
        opencl_tuner_file=tuning.file if tuning else None,
        overrides=overrides or {}, opencl_devices=report.opencl, profile=profile,
    )
    settings, origins = generate_with_origins(req)
    # KataGo creates neither nested log directories nor a nested homeDataDir.
    Path(settings.logDir).mkdir(parents=True, exist_ok=True)
    Path(settings.homeDataDir).mkdir(parents=True, exist_ok=True)
    header = header_for(req, profile_file=profile_file) + (f"\nModel: {model}" if model else "")
    text = settings.render(header)
    return BuiltConfig(settings, text, devices, tuning, report, origins, profile, profile_file,
                       notes)
