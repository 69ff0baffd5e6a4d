"""The typed KataGo settings model, presets and per-device sizing (no engine needed)."""

from __future__ import annotations

import pytest

from katapool.config.generate import (
    ConfigRequest,
    cache_size_power,
    generate_settings,
    parse_override_pairs,
)
from katapool.config.presets import load_preset, preset_names
from katapool.config.settings import KataGoSettings, Mode
from katapool.devices.discover import parse_device_spec
from katapool.devices.model import Device, DeviceKind, DeviceReport
from katapool.devices.nvidia import parse_nvidia_smi
from katapool.engine.backend import Backend
from katapool.errors import ConfigError

RTX = Device(DeviceKind.NVIDIA, 1, "NVIDIA GeForce RTX 3090", 24576, (8, 6))
PASCAL = Device(DeviceKind.NVIDIA, 0, "NVIDIA GeForce GTX 1080", 8192, (6, 1))
CPU = Device(DeviceKind.CPU, 0, "CPU", 16384, cores=8, is_cpu_like=True)


def request(device: Device, backend: Backend, mode: Mode = Mode.ANALYSIS, preset: str = "desktop",
            **kw: object) -> ConfigRequest:
    return ConfigRequest(mode=mode, backend=backend, devices=[device], preset=load_preset(preset),
                         ram_mib=32768, **kw)  # type: ignore[arg-type]


def cfg_dict(settings: KataGoSettings) -> dict[str, str]:
    return dict(settings.items())


def test_presets_all_load() -> None:
    assert set(preset_names()) >= {"desktop", "server", "rpi", "jetson"}
    for name in preset_names():
        assert load_preset(name).description


def test_bad_preset_name() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'laptop' \\(known: desktop"):
        load_preset("laptop")


def test_fp16_follows_tensor_cores() -> None:
    assert cfg_dict(generate_settings(request(RTX, Backend.CUDA)))["cudaUseFP16"] == "true"
    assert cfg_dict(generate_settings(request(PASCAL, Backend.CUDA)))["cudaUseFP16"] == "false"
    assert cfg_dict(generate_settings(request(RTX, Backend.TENSORRT)))["trtUseFP16"] == "true"


def test_backend_device_keys() -> None:
    cuda = cfg_dict(generate_settings(request(RTX, Backend.CUDA)))
    assert cuda["cudaDeviceToUseThread0"] == "1"
    assert cuda["numNNServerThreadsPerModel"] == "1"
    trt = cfg_dict(generate_settings(request(RTX, Backend.TENSORRT)))
    assert trt["trtDeviceToUseThread0"] == "1" and "cudaDeviceToUseThread0" not in trt
    eigen = cfg_dict(generate_settings(request(CPU, Backend.EIGEN)))
    assert eigen["numEigenThreadsPerModel"] == "8"
    assert not any("DeviceToUse" in k or "UseFP16" in k for k in eigen)


def test_two_gpus_one_process() -> None:
    req = request(PASCAL, Backend.CUDA)
    req.devices = [PASCAL, RTX]
    cfg = cfg_dict(generate_settings(req))
    assert cfg["numNNServerThreadsPerModel"] == "2"
    assert (cfg["cudaDeviceToUseThread0"], cfg["cudaDeviceToUseThread1"]) == ("0", "1")


def test_batch_and_threads_by_device_class() -> None:
    big = generate_settings(request(RTX, Backend.CUDA, preset="server"))
    small = generate_settings(request(CPU, Backend.EIGEN, preset="server"))
    assert big.nnMaxBatchSize > small.nnMaxBatchSize
    assert small.numAnalysisThreads * small.numSearchThreadsPerAnalysisThread == 8
    gtp = generate_settings(request(RTX, Backend.CUDA, mode=Mode.GTP))
    assert "numSearchThreads" in cfg_dict(gtp) and "numAnalysisThreads" not in cfg_dict(gtp)
    assert cfg_dict(gtp)["logAllGTPCommunication"] == "false"  # gtp aborts without it


def test_rpi_preset_follows_katago_cpu_advice() -> None:
    s = generate_settings(request(CPU, Backend.EIGEN, mode=Mode.GTP, preset="rpi"))
    assert (s.numSearchThreads, s.maxVisits, s.nnMaxBatchSize) == (4, 100, 1)


def test_cache_size_from_ram_budget() -> None:
    desktop = load_preset("desktop")
    # 8% of 16 GiB, capped at 2 GiB -> 1310 MiB / 3 KB per entry -> 2^18 entries
    assert cache_size_power(16384, desktop) == 18
    assert cache_size_power(16384, desktop, members=4) == 16
    assert cache_size_power(64, desktop) >= 10  # never below KataGo's useful minimum


@pytest.mark.parametrize("key,value,needle", [
    ("nnMaxBatchSize", 0, "greater than or equal to 1"),
    ("nnCacheSizePowerOfTwo", 40, "less than or equal to 32"),
    ("reportAnalysisWinratesAs", "BLUE", "BLACK"),
    ("logDir", "logs\nnnMaxBatchSize = 1", "line break"),
    ("logDir", "a=b", "'='"),
    ("homeDataDir", "x # y", "comment"),
])
def test_bad_values_are_rejected(key: str, value: object, needle: str) -> None:
    req = request(CPU, Backend.EIGEN, overrides={key: value})
    with pytest.raises(ConfigError) as info:
        generate_settings(req)
    message = str(info.value)
    assert key in message and needle in message
    assert "\n" not in message


def test_unknown_keys_go_verbatim_but_checked() -> None:
    s = generate_settings(request(CPU, Backend.EIGEN, overrides={"wideRootNoise": "0.04"}))
    assert ("wideRootNoise", "0.04") in s.items()
    with pytest.raises(ConfigError, match="invalid KataGo key"):
        generate_settings(request(CPU, Backend.EIGEN, overrides={"bad key": "1"}))


def test_override_pairs() -> None:
    assert parse_override_pairs(["a=1, b = 2", "c=x"]) == {"a": "1", "b": "2", "c": "x"}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override_pairs(["novalue"])


def test_render_is_key_value_lines() -> None:
    text = generate_settings(request(RTX, Backend.CUDA)).render("header\nline two")
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert all(" = " in ln for ln in body)
    assert len({ln.split(" = ")[0] for ln in body}) == len(body), "duplicate keys"


def test_device_specs() -> None:
    report = DeviceReport(nvidia=[PASCAL, RTX], cpu=CPU, ram_mib=16384)
    assert parse_device_spec("auto", report) == [PASCAL]
    assert parse_device_spec("gpu:1", report) == [RTX]
    assert parse_device_spec("0,1", report) == [PASCAL, RTX]
    assert parse_device_spec("cpu", report) == [CPU]
    with pytest.raises(ConfigError, match="not found on this machine"):
        parse_device_spec("gpu:7", report)
    with pytest.raises(ConfigError, match="mix kinds"):
        parse_device_spec("gpu:0,cpu", report)
    with pytest.raises(ConfigError, match="unknown kind"):
        parse_device_spec("tpu:0", report)


def test_nvidia_smi_parsing() -> None:
    text = "0, NVIDIA H100 80GB HBM3, 81559, 9.0\n1, Tesla P100-PCIE-16GB, 16280, 6.0\n"
    h100, p100 = parse_nvidia_smi(text)
    assert h100.compute_capability == (9, 0) and h100.tensor_cores and h100.memory_mib == 81559
    assert p100.compute_capability == (6, 0) and not p100.tensor_cores
