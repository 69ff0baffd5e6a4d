"""Diagnosis of failed engine starts, from the engine's own words."""

from __future__ import annotations

from katapool.engine.backend import Backend
from katapool.engine.diagnose import diagnose


def test_missing_library() -> None:
    text = "katago: error while loading shared libraries: libOpenCL.so.1: cannot open shared object file"
    assert diagnose(text, 127).startswith("missing shared library libOpenCL.so.1: install an OpenCL")


def test_no_platform() -> None:
    text = "what():  OpenCL error at openclhelpers.cpp, func err, line 308, error CL_PLATFORM_NOT_FOUND_KHR"
    assert "install an OpenCL driver, e.g. pocl-opencl-icd" in diagnose(text, -6)


def test_bad_config_key_and_fallbacks() -> None:
    missing_key = "what():  Could not find key 'logAllGTPCommunication' in config"
    assert diagnose(missing_key, -6).startswith("bad config")
    assert diagnose("", 127).startswith("exit 127")
    assert diagnose("", -9) == "killed by SIGKILL"
    assert diagnose("Started, ready to begin handling requests", -9) == "killed by SIGKILL"
    assert "something exploded" in diagnose("starting\nfatal: something exploded", 1)


def test_backend_from_version_text() -> None:
    assert Backend.from_version_text("KataGo v1.18.1\nUsing OpenCL backend") is Backend.OPENCL
    assert Backend.from_version_text("Using TensorRT backend") is Backend.TENSORRT
    assert Backend.from_version_text("Using Cuda backend") is Backend.CUDA
    assert Backend.parse("trt") is Backend.TENSORRT
