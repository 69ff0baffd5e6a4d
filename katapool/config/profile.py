"""Measured profiles: settings chosen by running the engine on a device, kept on disk.

One profile per (backend, device, network, mode) slot, under ``paths.profiles_dir()``. It
records what it was measured with - the engine build, the device and its driver, the network
- so a profile whose engine, driver or network has since changed is ignored (with a note
saying which) instead of steering a config with stale figures.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from katapool import __version__, paths
from katapool.config.settings import Mode
from katapool.devices.fingerprint import file_stamp, nvidia_fingerprint, opencl_fingerprint
from katapool.devices.model import Device, DeviceKind
from katapool.engine.backend import Backend
from katapool.engine.download import sha256_of
from katapool.engine.probe import EngineInfo
from katapool.engine.tuning import safe_name

FORMAT = 1
SETTINGS = ("useFP16", "nnMaxBatchSize", "numSearchThreads")


class FileIdentity(BaseModel):
    """A file by content (sha256), with the size/mtime it had, so a check can skip the hash
    while the file is untouched."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        resolved = path.resolve()
        st = resolved.stat()
        return cls(path=str(resolved), size=st.st_size, mtime_ns=st.st_mtime_ns,
                   sha256=sha256_of(resolved))

    def matches(self, path: Path) -> bool:
        resolved = path.resolve()
        stamp = file_stamp(resolved)
        if stamp is None or stamp[0] != self.size:
            return False
        if str(resolved) == self.path and stamp[1] == self.mtime_ns:
            return True
        return sha256_of(resolved) == self.sha256  # moved or touched: same content is fine


class EngineIdentity(BaseModel):
    backend: Backend
    version: str
    git_revision: str | None
    binary: FileIdentity


class DeviceIdentity(BaseModel):
    spec: str
    name: str
    kind: DeviceKind
    driver: str = Field(description="fingerprint of the driver stack the device is reached "
                        "through (OpenCL ICDs and libraries, or the NVIDIA driver)")
    platform: str | None = None  # e.g. the OpenCL platform KataGo reported


class NetworkIdentity(BaseModel):
    name: str
    file: FileIdentity


class Decision(BaseModel):
    setting: str
    value: bool | int
    reason: str
    figures: dict[str, Any] = Field(default_factory=dict)


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    engine: EngineIdentity
    device: DeviceIdentity
    network: NetworkIdentity
    mode: Mode
    decisions: list[Decision]
    measured_at: datetime
    seconds: float = 0.0
    options: dict[str, Any] = Field(default_factory=dict)  # visits, positions, board size...
    katapool_version: str = __version__

    def decision(self, setting: str) -> Decision | None:
        return next((d for d in self.decisions if d.setting == setting), None)

    def values(self) -> dict[str, bool | int]:
        return {d.setting: d.value for d in self.decisions}


def driver_fingerprint(device: Device, backend: Backend) -> str:
    if backend is Backend.OPENCL:
        return "opencl:" + opencl_fingerprint()
    if device.kind is DeviceKind.NVIDIA:
        return "nvidia:" + nvidia_fingerprint()
    return "cpu:" + device.name


def engine_identity(info: EngineInfo) -> EngineIdentity:
    return EngineIdentity(backend=info.backend, version=info.version,
                          git_revision=info.git_revision, binary=FileIdentity.of(info.path))


def device_identity(device: Device, backend: Backend, platform: str | None = None) -> DeviceIdentity:
    return DeviceIdentity(spec=device.spec, name=device.name, kind=device.kind,
                          driver=driver_fingerprint(device, backend), platform=platform)


def network_name(model: Path) -> str:
    name = model.name
    for suffix in (".bin.gz", ".txt.gz", ".bin", ".gz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def profile_path(backend: Backend, device: Device, model: Path, mode: Mode) -> Path:
    slot = safe_name(f"{backend.value}-{device.spec}-{mode.value}-{network_name(model)}")
    return paths.profiles_dir() / f"{slot}.json"


def load_profile(path: Path) -> Profile | None:
    try:
        return Profile.model_validate_json(path.read_text())
    except (OSError, ValueError, ValidationError):
        return None


def save_profile(path: Path, profile: Profile) -> None:
    """Write atomically: a config being generated reads a whole profile or the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".profile-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(profile.model_dump_json(indent=2))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def stale_because(profile: Profile, info: EngineInfo, device: Device, model: Path) -> str | None:
    """Why ``profile`` no longer describes this engine, device and network (None: it does)."""
    eng = profile.engine
    if (eng.backend, eng.version, eng.git_revision) != (info.backend, info.version,
                                                        info.git_revision):
        return (f"engine changed (measured with KataGo {eng.version} {eng.backend.label}, "
                f"now {info.version} {info.backend.label})")
    if not eng.binary.matches(info.path):
        return f"engine binary changed ({info.path} is not the one measured)"
    if profile.device.name != device.name:
        return f"device changed (measured on {profile.device.name}, now {device.name})"
    if profile.device.driver != driver_fingerprint(device, info.backend):
        return "driver changed (the OpenCL/NVIDIA driver stack differs from when measured)"
    if profile.network.name != network_name(model) or not profile.network.file.matches(model):
        return f"network changed ({model.name} is not the file measured)"
    return None


def find_profile(info: EngineInfo, device: Device, model: Path,
                 mode: Mode) -> tuple[Profile | None, Path, str | None]:
    """The usable profile for this slot, its file, and a note when one exists but is not
    used."""
    path = profile_path(info.backend, device, model, mode)
    if not path.exists():
        return None, path, None
    profile = load_profile(path)
    if profile is None or profile.format != FORMAT:
        return None, path, f"profile {path} ignored: unreadable or from another katapool"
    why = stale_because(profile, info, device, model)
    if why:
        # The whole slot (mode, network), so that running the command makes the note go away.
        return None, path, f"profile {path} ignored: {why}; re-measure with `katapool " \
                           f"prepare --measure --device {device.spec} --mode {mode.value} " \
                           f"--model {shlex.quote(str(model))}`"
    return profile, path, None


def profile_status(profile: Profile, engines: list[EngineInfo], devices: list[Device]) -> str:
    """``current``, or why the profile would be ignored now, for listings (doctor,
    ``katapool devices --profile``): checked against the engines and devices given."""
    engine = next((e for e in engines if e.backend is profile.engine.backend
                   and e.version == profile.engine.version), None) or \
        next((e for e in engines if e.backend is profile.engine.backend), None)
    if engine is None:
        return f"stale: no {profile.engine.backend.label} engine installed"
    device = next((d for d in devices if d.spec == profile.device.spec), None)
    if device is None and not any(d.kind is DeviceKind.OPENCL for d in devices) \
            and profile.device.kind is DeviceKind.OPENCL:
        # OpenCL not listed (the listing needs a network): the driver check still applies.
        device = Device(DeviceKind.OPENCL, int(profile.device.spec.partition(":")[2] or 0),
                        profile.device.name)
    if device is None:
        return f"stale: device {profile.device.spec} not found"
    network = Path(profile.network.file.path)
    if not network.exists():
        return f"stale: network {network} is gone"
    why = stale_because(profile, engine, device, network)
    return f"stale: {why}" if why else "current"


def all_profiles() -> list[tuple[Path, Profile | None]]:
    root = paths.profiles_dir()
    try:
        files = sorted(root.glob("*.json"))
    except OSError:
        return []
    return [(f, load_profile(f)) for f in files]


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
