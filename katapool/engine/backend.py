"""KataGo's compute backends and the facts katapool needs about each."""

from __future__ import annotations

from enum import StrEnum


class Backend(StrEnum):
    EIGEN = "eigen"
    OPENCL = "opencl"
    CUDA = "cuda"
    TENSORRT = "tensorrt"
    METAL = "metal"
    ONNX = "onnx"
    UNKNOWN = "unknown"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @classmethod
    def from_version_text(cls, text: str) -> Backend:
        """Map ``katago version``'s ``Using X backend`` line to a backend."""
        lowered = text.lower()
        for needle, backend in _VERSION_NEEDLES:
            if needle in lowered:
                return backend
        return cls.UNKNOWN

    @classmethod
    def parse(cls, name: str) -> Backend:
        key = name.strip().lower()
        aliases = {"trt": cls.TENSORRT, "cpu": cls.EIGEN}
        if key in aliases:
            return aliases[key]
        try:
            return cls(key)
        except ValueError:
            known = ", ".join(b.value for b in cls if b is not cls.UNKNOWN)
            raise ValueError(f"unknown backend {name!r} (known: {known}, trt)") from None


_LABELS = {
    Backend.EIGEN: "Eigen",
    Backend.OPENCL: "OpenCL",
    Backend.CUDA: "CUDA",
    Backend.TENSORRT: "TensorRT",
    Backend.METAL: "Metal",
    Backend.ONNX: "ONNX",
    Backend.UNKNOWN: "unknown",
}

# Checked in order: "tensorrt" must win over "cuda" in texts that mention both.
_VERSION_NEEDLES = [
    ("using tensorrt backend", Backend.TENSORRT),
    ("using cuda backend", Backend.CUDA),
    ("using opencl backend", Backend.OPENCL),
    ("using eigen", Backend.EIGEN),
    ("using metal backend", Backend.METAL),
    ("using onnx", Backend.ONNX),
]
