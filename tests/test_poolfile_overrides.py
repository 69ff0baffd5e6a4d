"""KataGo settings given as overrides: a pool file's ``overrides`` (joined into
``-override-config k=v,...``), ``katapool analysis``/``gtp -override-config`` and ``config
generate --set``. A comma in a value must not smuggle in a second key; unknown keys and
out-of-range values are one-line errors naming the key (and, in katapool.yaml, its line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import G170, Katapool
from katapool.config.generate import ConfigRequest, generate_settings
from katapool.config.katago_keys import KEYS, is_known_key
from katapool.config.overrides import check_override_arg
from katapool.config.poolfile import parse_pool_file
from katapool.config.presets import load_preset
from katapool.config.settings import Mode
from katapool.devices.model import Device, DeviceKind
from katapool.engine.backend import Backend
from katapool.errors import ConfigError

CPU = Device(DeviceKind.CPU, 0, "CPU", 16384, cores=8, is_cpu_like=True)
POOL = """\
models:
  main:
    members: 1
  human:
    members: 1
    overrides:
      humanSLProfile: rank_5k
      {line}
listen:
  unix: default
"""


def _error(line: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_pool_file(POOL.format(line=line))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("line,key,needle", [
    # The injection: one value, two KataGo settings once joined with commas.
    ('humanSLRootExploreProbWeightful: "0.5,homeDataDir=/tmp/attacker"',
     "humanSLRootExploreProbWeightful", "','"),
    ('logDir: "/tmp/x\\nmaxVisits = 1"', "logDir", "line break"),
    ('homeDataDir: "a=b"', "homeDataDir", "'='"),
    ('homeDataDir: "x # y"', "homeDataDir", "comment"),
    ("maxVisits: 0", "maxVisits", "greater than or equal to 1"),
    ("nnCacheSizePowerOfTwo: 40", "nnCacheSizePowerOfTwo", "less than or equal to 32"),
    ("reportAnalysisWinratesAs: BLUE", "reportAnalysisWinratesAs", "BLACK"),
    ("maxVisit: 100", "maxVisit", "did you mean maxVisits"),
    ("bogusSetting: 1", "bogusSetting", "not a setting KataGo reads"),
    ("ponderingEnabled: true", "ponderingEnabled", "analysis"),  # GTP only
])
def test_bad_overrides_name_key_and_line(line: str, key: str, needle: str) -> None:
    message = _error(line)
    assert message.startswith(f"katapool.yaml:8: models.human.overrides.{key}: "), message
    assert needle in message, message


def test_good_overrides_reach_the_engine_as_katago_reads_them() -> None:
    spec = parse_pool_file(POOL.format(line="rootNoiseEnabled: yes\n"
                                       "      maxVisits0: 400\n"
                                       "      cudaDeviceToUseThread1: 1\n"
                                       "      avoidSgf2PatternUtility: 0.25\n"
                                       "      wideRootNoise: 0.04")).models["human"]
    assert spec.overrides == {"humanSLProfile": "rank_5k", "rootNoiseEnabled": "true",
                              "maxVisits0": "400", "cudaDeviceToUseThread1": "1",
                              "avoidSgf2PatternUtility": "0.25", "wideRootNoise": "0.04"}


@pytest.mark.parametrize("backend", [Backend.CUDA, Backend.TENSORRT, Backend.OPENCL,
                                     Backend.METAL, Backend.EIGEN])
@pytest.mark.parametrize("mode", [Mode.ANALYSIS, Mode.GTP])
def test_every_key_katapool_writes_is_known(backend: Backend, mode: Mode) -> None:
    """The key list against the keys katapool's own configs use (a typo in either shows)."""
    device = CPU if backend is Backend.EIGEN else \
        Device(DeviceKind.NVIDIA, 0, "NVIDIA GeForce RTX 3090", 24576, (8, 6))
    opencl = [Device(DeviceKind.OPENCL, 0, device.name)] if backend is Backend.OPENCL else []
    req = ConfigRequest(mode=mode, backend=backend, devices=[device], preset=load_preset("server"),
                        ram_mib=32768, opencl_devices=opencl,
                        opencl_tuner_file=Path("/tmp/t.txt") if opencl else None)
    settings = generate_settings(req)
    unknown = [k for k, _ in settings.items() if not is_known_key(k)]
    assert unknown == []
    assert not is_known_key("maxVisitz") and not is_known_key("cudaDeviceToUseThreadX")
    assert {"maxVisits", "homeDataDir", "humanSLProfile", "nnMaxBatchSize"} <= KEYS


def test_own_override_config_is_checked_as_katago_splits_it() -> None:
    # KaTrain's launch, and KataGo's own comma form: the caller's commas are the caller's.
    assert check_override_arg("homeDataDir=/home/me/.katrain", Mode.ANALYSIS)
    assert check_override_arg("maxVisits=50, wideRootNoise=0.04", Mode.ANALYSIS)
    for arg, needle in (("maxVisit=50", "-override-config maxVisit: not a setting"),
                        ("maxVisits=lots", "-override-config maxVisits: Input should be"),
                        ("maxVisits=5,oops", "'oops' is not key=value"),
                        ("rules=japanese", "-override-config rules: does not apply")):
        with pytest.raises(ConfigError) as info:
            check_override_arg(arg, Mode.ANALYSIS)
        assert needle in str(info.value)
    assert check_override_arg("rules=japanese", Mode.GTP)


def test_config_generate_set_refuses_unknown_keys() -> None:
    req = ConfigRequest(mode=Mode.ANALYSIS, backend=Backend.EIGEN, devices=[CPU],
                        preset=load_preset("server"), ram_mib=32768,
                        overrides={"wideRootNoize": "0.04"})
    with pytest.raises(ConfigError, match="'wideRootNoize'.*did you mean wideRootNoise"):
        generate_settings(req)


@pytest.mark.engine
def test_katapool_analysis_refuses_a_bad_override_before_starting(kp: Katapool) -> None:
    run = kp.run("analysis", "-model", str(G170), "-override-config", "maxVisit=10", timeout=120)
    assert run.returncode != 0 and run.stdout == ""
    assert "-override-config maxVisit: not a setting KataGo reads" in run.stderr
