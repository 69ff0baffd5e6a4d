"""What compiling KataGo needs, checked before anything is downloaded or configured, so a
missing piece is named with the command that installs it instead of surfacing as a CMake or
compiler error 40 lines into a log."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from katapool.engine.backend import Backend

# KataGo's cpp/CMakeLists.txt asks for this CMake.
MIN_CMAKE = (3, 18, 2)
BUILDABLE = (Backend.EIGEN, Backend.OPENCL, Backend.CUDA, Backend.TENSORRT)
# NVIDIA's libraries come from NVIDIA's apt repository (or JetPack on a Jetson), not Debian's.
NVIDIA_REPO = "NVIDIA's CUDA apt repository, or JetPack on a Jetson"


@dataclass(frozen=True)
class Missing:
    what: str
    packages: tuple[str, ...]  # Debian/Ubuntu/Raspberry Pi OS packages that provide it
    note: str = ""  # where the packages come from, when not the distribution itself

    def describe(self, sudo: str) -> str:
        text = f"{self.what} ({sudo}apt-get install {' '.join(self.packages)}"
        return text + (f", from {self.note})" if self.note else ")")


def default_include_dirs() -> list[Path]:
    """Where CMake's find_path and the compiler look for headers on a Debian-like system."""
    dirs = [Path(p) for var in ("CPATH", "CPLUS_INCLUDE_PATH")
            for p in os.environ.get(var, "").split(os.pathsep) if p]
    dirs += [Path("/usr/local/include"), Path("/usr/include")]
    dirs += sorted(Path("/usr/include").glob("*-linux-gnu*"))  # multiarch: zipconf.h, CL/
    for cuda in (Path("/usr/local/cuda/include"), *sorted(Path("/usr/local").glob("cuda-*/include"))):
        dirs.append(cuda)
    return dirs


def _header(name: str, dirs: Sequence[Path]) -> bool:
    return any((d / name).is_file() for d in dirs)


def cxx_compiler() -> str | None:
    """The compiler CMake would pick: $CXX, else c++, g++ or clang++ on PATH."""
    explicit = os.environ.get("CXX")
    if explicit:
        return shutil.which(explicit.split()[0])
    return next((found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)


def cmake_version(cmake: str) -> tuple[int, ...] | None:
    try:
        text = subprocess.run([cmake, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def _cmake_problem() -> Missing | None:
    cmake = shutil.which("cmake")
    if cmake is None:
        return Missing("CMake", ("cmake",))
    version = cmake_version(cmake)
    if version is not None and version < MIN_CMAKE:
        have, need = ".".join(map(str, version)), ".".join(map(str, MIN_CMAKE))
        return Missing(f"CMake {need} or newer (this one is {have})", ("cmake",),
                       "a newer distribution release, or cmake.org/download")
    return None


def missing_prereqs(backend: Backend, include_dirs: Sequence[Path] | None = None) -> list[Missing]:
    """Every build prerequisite of ``backend`` this machine lacks (empty: ready to build)."""
    dirs = list(include_dirs) if include_dirs is not None else default_include_dirs()
    missing: list[Missing] = []
    if (cmake := _cmake_problem()) is not None:
        missing.append(cmake)
    if cxx_compiler() is None:
        missing.append(Missing("a C++ compiler", ("build-essential",)))
    if shutil.which("make") is None:
        missing.append(Missing("make", ("build-essential",)))
    if not _header("zlib.h", dirs):
        missing.append(Missing("zlib headers", ("zlib1g-dev",)))
    if not (_header("zip.h", dirs) and _header("zipconf.h", dirs)):
        missing.append(Missing("libzip headers", ("libzip-dev",)))
    if backend is Backend.EIGEN and not _header("eigen3/Eigen/Core", dirs):
        missing.append(Missing("Eigen 3 headers", ("libeigen3-dev",)))
    if backend is Backend.OPENCL and not _header("CL/cl.h", dirs):
        missing.append(Missing("OpenCL headers and loader", ("ocl-icd-opencl-dev",)))
    if backend in (Backend.CUDA, Backend.TENSORRT) and not (
            _header("cuda_runtime.h", dirs) or shutil.which("nvcc")):
        missing.append(Missing("the CUDA toolkit", ("nvidia-cuda-toolkit",), NVIDIA_REPO))
    if backend is Backend.CUDA and not _header("cudnn.h", dirs):
        missing.append(Missing("cuDNN headers", ("libcudnn9-dev-cuda-12",), NVIDIA_REPO))
    if backend is Backend.TENSORRT:
        if not _header("NvInfer.h", dirs):
            missing.append(Missing("TensorRT headers", ("libnvinfer-dev", "libnvonnxparsers-dev"),
                                   NVIDIA_REPO))
        if not (_header("google/protobuf/message.h", dirs) and shutil.which("protoc")):
            missing.append(Missing("Protocol Buffers", ("libprotobuf-dev", "protobuf-compiler")))
    return missing


def prereq_message(backend: Backend, missing: Sequence[Missing]) -> str:
    """One line: each missing piece with the command that installs it, then all at once."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    parts = "; ".join(m.describe(sudo) for m in missing)
    # One package can cover two lines (build-essential: the compiler and make).
    packages = list(dict.fromkeys(p for m in missing for p in m.packages))
    return (f"cannot build the {backend.label} backend, missing: {parts}. On Debian, Ubuntu or "
            f"Raspberry Pi OS: {sudo}apt-get install -y {' '.join(packages)}")
