"""The one device syntax every command takes (``--device`` / ``--gpus``), parsed without
looking at the hardware: ``auto``, ``cpu``, ``gpu:N`` (also ``nvidia:N``, ``cuda:N``,
``trt:N``), ``opencl:N``, a bare index ``N`` (an NVIDIA GPU), or a comma list of one kind
(``0,1`` is ``gpu:0,gpu:1``). Whether the devices exist is checked later, against what
discovery found (:func:`katapool.devices.discover.parse_device_spec`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from katapool.devices.model import DeviceKind
from katapool.errors import ConfigError

SYNTAX = "auto, cpu, N, gpu:N or opencl:N, or a list of one kind: 0,1 or gpu:0,gpu:1"
_KINDS = {"gpu": DeviceKind.NVIDIA, "nvidia": DeviceKind.NVIDIA, "cuda": DeviceKind.NVIDIA,
          "trt": DeviceKind.NVIDIA, "tensorrt": DeviceKind.NVIDIA, "opencl": DeviceKind.OPENCL}


@dataclass(frozen=True)
class DeviceRef:
    """A device named on the command line (not yet found on the machine)."""

    kind: DeviceKind
    index: int = 0
    text: str = field(default="", compare=False)  # as the user wrote it, for messages

    @property
    def spec(self) -> str:
        # The same text as Device.spec, so a parsed list reads like `katapool devices`.
        return "cpu" if self.kind is DeviceKind.CPU else f"{self.kind.value}:{self.index}"


def parse_devices(text: str) -> list[DeviceRef] | None:
    """The devices ``text`` names, in order (repeats kept: two members on one GPU); None
    for ``auto`` (the best device found). Errors are one line naming the bad part."""
    cleaned = text.strip().lower()
    if cleaned in ("", "auto"):
        return None
    refs: list[DeviceRef] = []
    for part in (p.strip() for p in cleaned.split(",")):
        if part == "cpu":
            refs.append(DeviceRef(DeviceKind.CPU, 0, part))
            continue
        kind_text, sep, index_text = part.rpartition(":")
        if sep and kind_text not in _KINDS:
            raise ConfigError(f"bad device {part!r}: unknown kind {kind_text!r} "
                              "(use cpu, gpu, opencl)")
        if not index_text.isdigit():
            raise ConfigError(f"bad device {part!r}: use {SYNTAX}")
        kind = _KINDS[kind_text] if sep else DeviceKind.NVIDIA
        refs.append(DeviceRef(kind, int(index_text), part))
    if len({r.kind for r in refs}) > 1:
        raise ConfigError(f"devices {text.strip()!r} mix kinds; one config drives one kind "
                          "of device")
    return refs


def spec_text(refs: list[DeviceRef] | None) -> str:
    """``refs`` written back in the syntax (``auto`` for None)."""
    return ",".join(r.spec for r in refs) if refs else "auto"
