"""What one ``katapool bench`` run measured: a row per deployment method and precision."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "failed", "unavailable"]


@dataclass(frozen=True)
class BenchRow:
    """One way of running the network. ``evals_per_second`` is None when it could not be
    measured: ``status`` says whether the method is missing here ("unavailable") or was tried
    and broke ("failed"), and ``note`` says why."""

    method: str  # "KataGo OpenCL", "ONNX Runtime CPU", "TensorRT", ...
    backend: str  # "opencl", "onnxruntime-cpu", "tensorrt", ...
    precision: str  # "fp32", "fp16", "int8", "int8-u8" ("" when the whole method is missing)
    batch: int
    evals_per_second: float | None
    preparation_seconds: float | None  # from the network file (or start) to the first result
    size_bytes: int | None  # what this method loads: the network file, ONNX bytes, a plan
    note: str = ""
    status: Status = "ok"

    @property
    def label(self) -> str:
        return f"{self.method} {self.precision.upper()}".strip()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def unavailable(method: str, backend: str, batch: int, reason: str,
                precision: str = "") -> BenchRow:
    return BenchRow(method, backend, precision, batch, None, None, None,
                    f"unavailable: {reason}", "unavailable")


@dataclass
class BenchReport:
    network: dict[str, Any]  # name, file, size_bytes, parameters
    machine: dict[str, Any]  # cpu, cores, ram, gpus, runtime versions
    settings: dict[str, Any]  # batch, seconds, iterations, skipped parts, calibration
    rows: list[BenchRow] = field(default_factory=list)
    date: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"date": self.date, "network": self.network, "machine": self.machine,
                "settings": self.settings, "rows": [r.as_dict() for r in self.rows]}

    def machine_line(self) -> str:
        """"AMD EPYC, 2 cores, no GPU" — for titles."""
        m = self.machine
        gpus = m.get("gpus") or []
        gpu_text = ", ".join(gpus) if gpus else "no GPU"
        return f"{m.get('cpu', 'CPU')}, {m.get('logical_cores', '?')} cores, {gpu_text}"
