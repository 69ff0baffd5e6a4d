"""Small typed facts about devices."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class DeviceKind(StrEnum):
    NVIDIA = "nvidia"
    OPENCL = "opencl"
    CPU = "cpu"


@dataclass(frozen=True)
class Device:
    kind: DeviceKind
    index: int
    name: str
    memory_mib: int | None = None
    compute_capability: tuple[int, int] | None = None
    cores: int | None = None
    is_cpu_like: bool = False  # an OpenCL device that is really the CPU (e.g. PoCL)

    @property
    def spec(self) -> str:
        return "cpu" if self.kind is DeviceKind.CPU else f"{self.kind.value}:{self.index}"

    @property
    def tensor_cores(self) -> bool:
        """Volta (7.0) and newer have tensor cores, where FP16 is a large, safe win."""
        return self.compute_capability is not None and self.compute_capability >= (7, 0)


@dataclass
class DeviceReport:
    nvidia: list[Device] = field(default_factory=list)
    opencl: list[Device] = field(default_factory=list)
    cpu: Device | None = None
    ram_mib: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def all(self) -> list[Device]:
        return [*self.nvidia, *self.opencl, *([self.cpu] if self.cpu else [])]
