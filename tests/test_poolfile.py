"""The pool file (katapool.yaml): valid files load; every mistake names its line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import Katapool
from katapool.config.poolfile import ModelSpec, is_loopback, parse_pool_file
from katapool.errors import ConfigError

GOOD = """\
engine: /opt/katago/katago
models:
  main:
    path: /nets/b18.bin.gz
    gpus: [0, 1]
  human:
    path: /nets/b18-human.bin.gz
    members: 1
default_model: main
listen:
  websocket: 0.0.0.0:6364
limits:
  max_visits: 5000
  per_client_concurrency: 8
policy:
  functional_deadline: 30
"""


def test_good_file_loads() -> None:
    f = parse_pool_file(GOOD)
    assert list(f.models) == ["main", "human"]
    assert f.models["main"].member_count() == 2
    assert f.models["human"].member_count() == 1
    assert f.limits.max_visits == 5000 and f.limits.per_client_concurrency == 8
    assert f.policy.functional_deadline == 30
    assert f.listen.websocket == "0.0.0.0:6364" and f.listen.unix == "default"


def test_empty_file_is_the_default() -> None:
    f = parse_pool_file("")
    assert list(f.models) == ["main"] and f.default_model == "main"


@pytest.mark.parametrize("text, expected", [
    ("models:\n  main:\n    path: x\n   members: 2\n", "katapool.yaml:4:"),  # bad indentation
    ("models: [unclosed\n", "not valid YAML"),
    ("models:\n  main:\n    members: 0\n", "katapool.yaml:3: models.main.members: Input should be "
                                           "greater than or equal to 1"),
    ("models:\n  main:\n    memebrs: 2\n", "katapool.yaml:3: models.main.memebrs: unknown setting"),
    ("limits:\n  max_visits: lots\n", "katapool.yaml:2: limits.max_visits"),
    ("listen:\n  websocket: 6364\n", "katapool.yaml:2: listen.websocket"),
    ("models:\n  main: {}\ndefault_model: other\n", "default_model 'other' is not one of"),
    ("- just\n- a list\n", "expected a mapping"),
    ("policy:\n  crash_budget: -1\n", "katapool.yaml:2: policy.crash_budget"),
    # Ray clusters: Ray assigns GPUs; a member drives one; placement is one of two words.
    ("ray: auto\nmodels:\n  main:\n    gpus: [0]\n", "models.main.gpus: on a Ray cluster Ray "
                                                      "assigns the GPUs"),
    ("models:\n  main:\n    resources: {GPU: 2}\n", "katapool.yaml:3: models.main.resources: "
                                                    "Value error, resources: a member drives one GPU"),
    ("models:\n  main:\n    placement: everywhere\n", "katapool.yaml:3: models.main.placement"),
    ("ray: headnode\n", "katapool.yaml:1: ray: Value error, expected host:port"),
])
def test_mistakes_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pool_file(text)
    assert expected in str(info.value)


def test_cluster_keys_load() -> None:
    f = parse_pool_file("ray: 10.0.0.1:6379\nmodels:\n  main:\n    members: 3\n"
                        "    placement: pack\n    resources: {katapool_cpu: 1, big_ram: 0.5}\n")
    assert f.ray == "10.0.0.1:6379"
    main = f.models["main"]
    assert main.member_count() == 3 and main.placement == "pack"
    assert main.resources == {"katapool_cpu": 1.0, "big_ram": 0.5}
    assert parse_pool_file("").models["main"].resources == {"GPU": 1.0}


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_start_with_malformed_file_fails_fast(fresh_kp: Katapool, tmp_path: Path) -> None:
    bad = tmp_path / "katapool.yaml"
    bad.write_text("models:\n  main:\n    members: two\n")
    proc = fresh_kp.run("start", "--config", str(bad), "--state-dir", str(tmp_path / "st"),
                        timeout=60)
    assert proc.returncode == 2
    assert f"{bad}:3: models.main.members" in proc.stderr
    assert not (tmp_path / "st" / "katapool.pid").exists()


def test_start_without_a_file_takes_every_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No file, no flags: one member per NVIDIA GPU found (a FAKE nvidia-smi reports two)."""
    from katapool.cli import daemon_cmd
    from katapool.cli.main import build_parser

    fakes = Path(__file__).parent / "fakes"
    monkeypatch.setenv("PATH", f"{fakes}:{os.environ['PATH']}")
    parser = build_parser()

    def main_model(*argv: str) -> ModelSpec:
        return daemon_cmd._pool_file(parser.parse_args(["start", *argv])).models["main"]

    main = main_model()
    assert main.gpus == [0, 1] and main.member_count() == 2
    assert main_model("--gpus", "1").gpus == [1]
    assert main_model("-device", "gpu:1").gpus == [1]
    assert main_model("--members", "3").member_count() == 3
