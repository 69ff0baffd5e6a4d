"""Turn a failed KataGo start into one sentence a user can act on.

Used by ``katapool engine info`` and by the pool supervisor when a member dies before it is
ready, so a broken install is reported with its cause instead of restarted forever.
"""

from __future__ import annotations

import glob
import os
import re
import signal
from pathlib import Path

_MISSING_LIB = re.compile(r"error while loading shared libraries: ([^:\s]+)")

# (pattern in the engine's output, cause, advice)
_KNOWN_FAILURES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"CL_PLATFORM_NOT_FOUND|No OpenCL platforms|clGetPlatformIDs|-1001", re.I),
        "no OpenCL platform found: install an OpenCL driver, e.g. pocl-opencl-icd "
        "(CPU) or your GPU vendor's OpenCL ICD",
    ),
    (
        re.compile(r"no OpenCL devices|Found 0 device\(s\)", re.I),
        "no OpenCL device found: install an OpenCL driver, e.g. pocl-opencl-icd",
    ),
    (
        re.compile(r"dlopen\(\): error loading libfuse|fuse: failed|Cannot mount AppImage", re.I),
        "the KataGo AppImage needs FUSE to run: let `katapool engine install` extract it "
        "(it uses --appimage-extract), or install libfuse2",
    ),
    (
        re.compile(r"out of memory|CUDA_ERROR_OUT_OF_MEMORY|std::bad_alloc|CL_MEM_OBJECT_ALLOCATION", re.I),
        "out of memory: lower nnMaxBatchSize, nnCacheSizePowerOfTwo or the number of members",
    ),
    (
        re.compile(r"CUDA error|cudaError|CUDA driver version is insufficient", re.I),
        "CUDA error: check the NVIDIA driver and that the CUDA/cuDNN versions match the build",
    ),
    (
        re.compile(r"TensorRT|nvinfer", re.I),
        "TensorRT error: check that the TensorRT version matches the KataGo build",
    ),
    (
        re.compile(r"Could not find key|Config is missing|Unknown key|could not parse", re.I),
        "bad config: KataGo rejected a key or value",
    ),
    (
        re.compile(r"Could not open|Error loading model|model file|no such file.*bin\.gz", re.I),
        "the network file could not be loaded",
    ),
]


def missing_library(output: str) -> str | None:
    m = _MISSING_LIB.search(output)
    return m.group(1) if m else None


def advice_for_library(lib: str) -> str:
    if lib.startswith("libOpenCL"):
        return "install an OpenCL ICD loader and driver, e.g. ocl-icd-libopencl1 and pocl-opencl-icd"
    if lib.startswith(("libcudnn", "libcublas", "libcudart", "libcuda")):
        return "install the CUDA/cuDNN runtime this KataGo build was made for"
    if lib.startswith("libnvinfer"):
        return "install the TensorRT runtime this KataGo build was made for"
    if lib.startswith("libzip"):
        return "install libzip (Debian: libzip4)"
    return "install the package that provides it"


def pocl_cache_problem() -> str | None:
    """Why PoCL (OpenCL on the CPU) would list no device although it is installed: it cannot
    write its kernel cache (a service user's read-only or missing home). Then the fix is a
    folder, not a driver. None when PoCL is not installed or its cache is writable."""
    vendors = os.environ.get("OCL_ICD_VENDORS") or "/etc/OpenCL/vendors"
    if not glob.glob(os.path.join(vendors, "*pocl*.icd")):
        return None
    if os.environ.get("POCL_CACHE_DIR"):
        cache = Path(os.environ["POCL_CACHE_DIR"])
    elif os.environ.get("XDG_CACHE_HOME"):
        cache = Path(os.environ["XDG_CACHE_HOME"]) / "pocl"
    else:
        cache = Path(os.path.expanduser("~")) / ".cache" / "pocl"
    existing = cache
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return None
    return (f"PoCL (OpenCL on the CPU) cannot write its kernel cache {cache} ({existing} is "
            "not writable), and then lists no device: set POCL_CACHE_DIR to a writable folder, "
            "or run with a writable HOME")


def diagnose(output: str, returncode: int | None = None) -> str:
    """The most likely cause of a failed start, from the engine's stderr/stdout text."""
    lib = missing_library(output)
    if lib:
        return f"missing shared library {lib}: {advice_for_library(lib)}"
    for pattern, cause in _KNOWN_FAILURES:
        if pattern.search(output):
            if cause.startswith("no OpenCL") and (pocl := pocl_cache_problem()):
                cause = pocl
            detail = _last_error_line(output)
            return f"{cause}" + (f" (engine said: {detail})" if detail else "")
    if returncode == 127:
        return "exit 127: the binary or one of its libraries could not be loaded"
    detail = _last_error_line(output)
    if detail:
        return f"engine failed: {detail}"
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    if lines and returncode not in (None, 0):
        return f"engine exited with code {returncode} (last output: {lines[-1][:200]})"
    return f"engine exited with code {returncode}" if returncode is not None else "engine failed"


def _last_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"error|what\(\)|exception|failed|abort|fatal", line, re.I):
            return line[:300]
    return ""
