"""One spelling table for the options commands share: KataGo's single-dash spellings and the
double-dash ones parse alike in every command, one device syntax everywhere, each preset
default stated, `--policy help`, and `katapool doctor`.

The parser tests read `katapool.cli.main`'s argparse tree directly (no subprocess); a command
that declares a shared option by hand, or with fewer spellings, fails here."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import G170, Katapool
from katapool.cli.main import build_parser, main
from katapool.cli.shared_options import SPELLINGS
from katapool.config.policy import PoolPolicy
from katapool.devices.model import DeviceKind
from katapool.devices.spec import DeviceRef, parse_devices
from katapool.errors import ConfigError

ALL = frozenset(SPELLINGS)
ENGINE = frozenset({"katago"})
# The single list: every command that takes a shared option, the arguments it needs besides
# (positionals, required options) and the shared options it takes.
COMMANDS: dict[str, tuple[list[str], frozenset[str]]] = {
    "start": ([], ALL - ENGINE),  # the daemon's engines come from the pool file
    "analysis": ([], ALL),
    "gtp": ([], ALL),
    "analyze": (["game.sgf"], frozenset({"model", "device"}) | ENGINE),
    "config generate": (["--mode", "gtp"], frozenset({"model", "device", "override_config"})
                        | ENGINE),
    "prepare": ([], frozenset({"model", "device"}) | ENGINE),
    "devices": ([], frozenset({"model"}) | ENGINE),
    "engine info": ([], frozenset({"model"}) | ENGINE),
    "engine build": (["--download-only"], frozenset({"model"})),
    "bench": ([], frozenset({"model"}) | ENGINE),
    "ray head": ([], frozenset({"device"})),
    "ray worker": (["--address", "head:6379"], frozenset({"model", "device"})),
    "model export-onnx": (["net.bin.gz", "-o", "net.onnx"], ENGINE),
    "model export-tflite": (["net.bin.gz", "-o", "net.tflite"], ENGINE),
    "model export-coreml": (["net.bin.gz", "-o", "net.mlpackage"], ENGINE),
    "model validate": (["net.bin.gz", "net.onnx", "--sgf", "g.sgf"], ENGINE),
    "model quantize": (["net.onnx", "--fp16", "-o", "q.onnx"], ENGINE),
}
VALUES = {"model": "net.bin.gz", "config": "my.cfg", "human_model": "human.bin.gz",
          "katago": "/opt/katago/katago",
          "override_config": "maxVisits=5,numSearchThreads=2", "device": "0,1"}


def _parsers(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its command line ("config generate"); aliases once."""
    found = {path: parser} if path else {}
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    found.update(_parsers(sub, f"{path} {name}".strip()))
    return found


PARSERS = _parsers(build_parser())


def _shared_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    found = {}
    for action in parser._actions:
        for option, spellings in SPELLINGS.items():
            if set(action.option_strings) & set(spellings):
                found[option] = action
    return found


def test_every_command_with_a_shared_option_is_in_the_table() -> None:
    taken = {cmd: frozenset(_shared_actions(p)) for cmd, p in PARSERS.items()}
    assert {cmd: opts for cmd, opts in taken.items() if opts} == \
        {cmd: opts for cmd, (_, opts) in COMMANDS.items()}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_shared_option_has_every_spelling(command: str) -> None:
    for option, action in _shared_actions(PARSERS[command]).items():
        # Every spelling (an older one may stay beside them: config generate's --set).
        assert set(SPELLINGS[option]) <= set(action.option_strings), (command, option)
        assert action.dest == option


def _parse(command: str, *argv: str) -> argparse.Namespace:
    extra, _ = COMMANDS[command]
    return build_parser().parse_args([*command.split(), *extra, *argv])


CASES = [(command, option, spelling) for command, (_, options) in COMMANDS.items()
         for option in sorted(options) for spelling in SPELLINGS[option]]


@pytest.mark.parametrize("command,option,spelling", CASES,
                         ids=[f"{c}:{s}" for c, _, s in CASES])
def test_both_spellings_parse_to_the_same_value(command: str, option: str, spelling: str) -> None:
    reference = getattr(_parse(command, SPELLINGS[option][0], VALUES[option]), option)
    assert reference not in (None, [])
    assert getattr(_parse(command, spelling, VALUES[option]), option) == reference


@pytest.mark.parametrize("command", sorted(c for c, (_, o) in COMMANDS.items() if "device" in o))
def test_one_device_syntax_everywhere(command: str) -> None:
    gpus = [DeviceRef(DeviceKind.NVIDIA, 0), DeviceRef(DeviceKind.NVIDIA, 1)]
    for text in ("0,1", "gpu:0,gpu:1", "GPU:0, nvidia:1", "cuda:0,1"):
        assert _parse(command, "--device", text).device == gpus, text
    assert _parse(command, "-gpus", "auto").device is None
    assert _parse(command).device is None


def test_device_syntax() -> None:
    assert parse_devices("cpu") == [DeviceRef(DeviceKind.CPU)]
    assert parse_devices("opencl:0,opencl:2") == [DeviceRef(DeviceKind.OPENCL, 0),
                                                  DeviceRef(DeviceKind.OPENCL, 2)]
    assert parse_devices("trt:3") == [DeviceRef(DeviceKind.NVIDIA, 3)]
    assert parse_devices("0,0") == [DeviceRef(DeviceKind.NVIDIA, 0)] * 2  # two members, one GPU
    assert parse_devices(" Auto ") is None and parse_devices("") is None
    for bad, needle in [("gpu:x", "bad device 'gpu:x'"), ("-1", "bad device '-1'"),
                        ("tpu:0", "unknown kind 'tpu'"), ("gpu:0,cpu", "mix kinds"),
                        ("0,,1", "bad device ''")]:
        with pytest.raises(ConfigError, match=needle):
            parse_devices(bad)


@pytest.mark.parametrize("command", sorted(c for c, (_, o) in COMMANDS.items() if "device" in o))
def test_device_errors_are_one_line(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    extra, _ = COMMANDS[command]
    assert main([*command.split(), *extra, "-gpus", "gpu:one"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "error: -gpus 'gpu:one': bad device 'gpu:one': use auto, cpu, N, gpu:N or opencl:N, or "
        "a list of one kind: 0,1 or gpu:0,gpu:1"]


def test_pool_commands_name_gpus(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Commands that put one member per GPU say so when given a CPU or OpenCL device."""
    assert main(["start", "--device", "opencl:0", "--state-dir", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --device opencl:0: katapool start puts one member on each "
                           "NVIDIA GPU listed")


def test_preset_defaults_are_stated() -> None:
    with_preset = {cmd for cmd, p in PARSERS.items()
                   if any("--preset" in a.option_strings for a in p._actions)}
    assert with_preset == {"start", "analysis", "gtp", "analyze", "config generate", "prepare"}
    for cmd in with_preset:
        (action,) = [a for a in PARSERS[cmd]._actions if "--preset" in a.option_strings]
        assert f"(default: {action.default})" in (action.help or ""), cmd
        assert "(default: " in " ".join(PARSERS[cmd].format_help().split()), cmd


def test_policy_help_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["analysis", "--policy", "help"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == set(PoolPolicy.model_fields)
    for key, info in PoolPolicy.model_fields.items():
        default = "none" if info.default is None else str(info.default)
        assert rows[key][0] == default, key
        assert len(rows[key]) > 2, f"{key} has no meaning"


def test_policy_values_still_parse() -> None:
    args = _parse("analysis", "--policy", "crash_budget=3", "--policy", "stop_grace=1")
    assert args.policy == ["crash_budget=3", "stop_grace=1"]


def test_start_passes_its_model_options_to_the_pool_file(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    from katapool.cli import daemon_cmd

    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi: no GPUs found
    args = _parse("start", "-model", "m.bin.gz", "-human-model", "h.bin.gz", "-override-config",
                  "maxVisits=7", "--preset", "desktop")
    spec = daemon_cmd._pool_file(args).models["main"]
    assert (spec.path, spec.human_model, spec.preset) == ("m.bin.gz", "h.bin.gz", "desktop")
    assert {k: str(v) for k, v in spec.overrides.items()} == {"maxVisits": "7"}
    with pytest.raises(ConfigError, match="--override-config maxVisitz: not a setting KataGo"):
        daemon_cmd._pool_file(_parse("start", "-override-config", "maxVisitz=7"))
    pool_file = tmp_path / "katapool.yaml"
    pool_file.write_text("models:\n  main: {}\n")
    with pytest.raises(ConfigError, match="go in the pool file"):
        daemon_cmd._pool_file(_parse("start", "-config", str(pool_file), "-model", "m.bin.gz"))
    with pytest.raises(ConfigError, match="unknown preset"):
        daemon_cmd._pool_file(_parse("start", "--preset", "laptop"))


# --- on the real engine --------------------------------------------------------------------


def _wait_ready(kp: Katapool, state: Path, proc: subprocess.Popen[Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the daemon exited ({proc.returncode})"
        run = kp.run("status", "--json", "--state-dir", str(state))
        if run.returncode == 0:
            status: dict[str, Any] = json.loads(run.stdout)
            if status.get("ready"):
                return status
        time.sleep(0.5)
    raise AssertionError("the daemon was not ready within 300 s")


@pytest.mark.engine
@pytest.mark.parametrize("spelling", ["-model", "--model"])
def test_start_takes_both_model_spellings(kp: Katapool, tmp_path: Path, spelling: str) -> None:
    from katapool.client import Client, Position

    state = tmp_path / "st"
    log = open(tmp_path / "daemon.out", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [sys.executable, "-m", "katapool", "start", spelling, str(G170), "--members", "1",
         "--no-dashboard", "--state-dir", str(state)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=kp.env)
    try:
        status = _wait_ready(kp, state, proc)
        (member,) = status["models"][0]["members"]
        argv = psutil.Process(member["pid"]).cmdline()
        assert argv[argv.index("-model") + 1] == str(G170)
        unix = next(a for a in status["addresses"] if a.startswith("unix:"))
        with Client.connect(unix) as client:
            result = client.analyze(Position.from_moves(["Q16", "D4"]), visits=8)
        assert result.best_move
    finally:
        kp.run("stop", "--state-dir", str(state), timeout=120)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    assert proc.returncode == 0, (tmp_path / "daemon.out").read_text()


def _doctor(kp: Katapool) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    text = kp.run("doctor", timeout=60)
    as_json = kp.run("doctor", "--json", timeout=60)
    assert as_json.returncode == text.returncode
    return text, json.loads(as_json.stdout)


@pytest.mark.engine
def test_doctor_on_the_test_data(kp: Katapool) -> None:
    text, report = _doctor(kp)
    checks = {c["name"]: c for c in report["checks"] if c["name"] != "tuning"}
    assert checks["engine"]["status"] == "ok" and "KataGo 1.18.1" in checks["engine"]["detail"]
    assert {"engine", "network", "devices", "opencl", "cuda", "tensorrt", "tflite", "coreml",
            "profiles", "daemon", "data dir", "cache dir", "state dir"} <= set(checks)
    assert checks["tflite"]["status"] == checks["coreml"]["status"] == "ok"  # the test extra
    assert checks["daemon"]["status"] in ("ok", "info")  # not running is no problem
    assert all(c["status"] in ("ok", "problem", "info") for c in report["checks"])
    assert all(c["fix"] for c in report["checks"] if c["status"] == "problem")
    assert text.returncode == (1 if report["problems"] else 0)
    lines = text.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["ok", "engine"]
    assert len(lines) == len(report["checks"]) + 1


def test_doctor_without_an_engine(fresh_kp: Katapool) -> None:
    text, report = _doctor(fresh_kp)
    assert text.returncode == 1 and report["problems"] >= 1
    engine = report["checks"][0]
    assert engine["name"] == "engine" and engine["status"] == "problem"
    assert engine["fix"] == "katapool engine install"
    first = text.stdout.splitlines()[0]
    assert first.startswith("problem") and "fix: katapool engine install" in first
    assert not fresh_kp.data_dir.exists(), "doctor only looks: it creates nothing"
