"""Deployment files stay valid and in step with the CLI: docker-compose.yml through the real
`docker compose config`, every katapool command in the Dockerfile, the systemd unit and
docs/deploy.md through katapool's own argument parser, and the example pool file through its
own loader."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
import yaml

from katapool.cli import daemon_cmd, engine_cmd
from katapool.cli.main import build_parser
from katapool.config.poolfile import (
    Listen,
    is_loopback,
    load_pool_file,
    parse_pool_file,
    split_address,
)
from katapool.config.presets import preset_names
from katapool.engine.backend import Backend
from katapool.engine.install import release_asset

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "deploy" / "katapool.service"
POOL_EXAMPLE = ROOT / "deploy" / "katapool.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"


def parse_cli(argv: list[str], where: str) -> Namespace:
    """``katapool ARGV`` through the real parser; a mismatch fails with argparse's message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `katapool {shlex.join(argv)}` does not parse: {stderr.getvalue().strip()}")


def parse_cli_ray(argv: list[str], where: str) -> tuple[Namespace, str | None]:
    """`parse_cli`, and the address of ``start --ray ADDRESS`` (None without one), checked to be
    one HOST:PORT."""
    args = parse_cli(argv, where)
    address = getattr(args, "ray", None)
    if address is not None:
        assert argv[:1] == ["start"], f"{where}: --ray belongs to `katapool start`: {argv}"
        try:
            split_address(address)
        except ValueError:
            pytest.fail(f"{where}: --ray wants HOST:PORT, got {address!r}")
    return args, address


_OPERATOR_CHARS = set(";&|()`")
_SHELL_WORDS = {"if", "then", "else", "elif", "fi", "do", "done", "exec", "!"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_commands(command: str) -> list[list[str]]:
    """The words of each simple command in a shell command line (split at &&, ;, |, ( ...)."""
    segments: list[list[str]] = []
    lexer = shlex.shlex(command, posix=True, punctuation_chars="".join(_OPERATOR_CHARS))
    lexer.whitespace_split = True
    current: list[str] = []
    for token in lexer:
        if set(token) <= _OPERATOR_CHARS:  # &&, ;, |, ( ... end a command
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    return segments


def katapool_invocations(command: str | list[str]) -> list[list[str]]:
    """The argument lists of every `katapool ...` in a shell command line (or an exec-form list),
    looking through `sudo -u USER`, `env`, `VAR=value` and `docker compose exec SERVICE`."""
    segments = [command] if isinstance(command, list) else shell_commands(command)
    found = []
    for words in segments:
        words = list(words)
        while words:
            head = words[0]
            if head in _SHELL_WORDS or head == "env" or _ASSIGNMENT.match(head):
                words.pop(0)
            elif head == "sudo":
                words.pop(0)
                while words and words[0].startswith("-"):
                    flag = words.pop(0)
                    if flag in ("-u", "-g") and words:
                        words.pop(0)
            elif head in ("docker", "docker-compose"):
                rest = words[2:] if head == "docker" else words[1:]
                if not rest or rest[0] != "exec":
                    break
                rest = rest[1:]
                while rest and rest[0].startswith("-"):
                    flag = rest.pop(0)
                    if flag in ("-u", "--user", "-e", "--env", "-w", "--workdir") and rest:
                        rest.pop(0)
                words = rest[1:]  # after the service name
            else:
                break
        if words and Path(words[0]).name == "katapool":
            found.append(words[1:])
    return found


# --- docker-compose.yml -------------------------------------------------------------------------

def compose_tool() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail("no Compose tool: neither `docker compose` nor `docker-compose` works here "
                "(`bin/bootstrap test` installs Debian's docker-compose)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as Compose itself resolves it, every profile included."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    proc = subprocess.run([*compose_tool(), "-f", str(COMPOSE_FILE), "--profile", "cpu", "config"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, f"compose config rejected docker-compose.yml:\n{proc.stderr}"
    config = yaml.safe_load(proc.stdout)
    assert isinstance(config, dict) and "services" in config, proc.stdout
    return config


def _ports(service: dict[str, Any]) -> set[tuple[int, int]]:
    """(published, container) pairs from the short or long port syntax."""
    out = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.add((int(port["published"]), int(port["target"])))
        else:
            published, _, target = str(port).rpartition(":")
            out.add((int(published.rpartition(":")[2]), int(target.split("/")[0])))
    return out


def _volumes(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume (or host path)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = volume["source"]
        else:
            source, target = str(volume).split(":")[:2]
            out[target] = source
    return out


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _seconds(value: str | int | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"([\d.]+)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"unreadable duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}) \
        .get("devices") or []


def test_compose_services_and_targets(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"katapool", "katapool-cpu"}
    for name, target in (("katapool", "gpu"), ("katapool-cpu", "cpu")):
        build = services[name]["build"]
        assert build["target"] == target
        assert Path(build["context"]).resolve() == ROOT
    assert "cpu" in services["katapool-cpu"]["profiles"]
    assert not services["katapool"].get("profiles"), "the GPU service runs without a profile"


def test_compose_reserves_nvidia_gpus(compose: dict[str, Any]) -> None:
    devices = _gpu_devices(compose["services"]["katapool"])
    assert devices, "the GPU service reserves no devices"
    for device in devices:
        assert device["driver"] == "nvidia"
        assert "gpu" in device["capabilities"]
        assert device.get("count") in ("all", -1) or device.get("device_ids"), device
    assert not _gpu_devices(compose["services"]["katapool-cpu"]), "the CPU service needs no GPU"


@pytest.mark.parametrize("name", ["katapool", "katapool-cpu"])
def test_compose_runs_katapool_start(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    command = service["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    assert command[:2] == ["katapool", "start"], command
    args = parse_cli(command[1:], f"docker-compose.yml {name}.command")
    assert args.func is daemon_cmd.cmd_start
    assert not args.detach, "a container's main process must stay in the foreground"
    assert args.no_dashboard
    websockets = [a[len("ws://"):].rstrip("/") for a in args.listen if a.startswith("ws://")]
    assert len(websockets) == 1, args.listen
    Listen(websocket=websockets[0])  # the daemon's own validation of the address
    host, port = split_address(websockets[0])
    assert not is_loopback(host), "a container must listen beyond loopback to be published"

    # The WebSocket port is published, and the healthcheck asks that port's /healthz.
    assert port in {target for _, target in _ports(service)}, _ports(service)
    health = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in health, health
    # Stopping drains for up to 60 s: Compose must wait longer before it kills.
    assert _seconds(service["stop_grace_period"]) > 60

    # The data directory is a named volume, so tuning and caches persist.
    data_dir = _environment(service)["KATAPOOL_DATA_DIR"]
    volumes = _volumes(service)
    assert data_dir in volumes, volumes
    assert volumes[data_dir] in (compose.get("volumes") or {}), "the data dir is not a named volume"


# --- Dockerfile ---------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, rest = text.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def dockerfile_stages(build_args: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per stage: base image, katapool invocations (RUN, and CMD/ENTRYPOINT), the RUN commands
    themselves (``shell``), ENV and EXPOSE, with build arguments at their defaults or as given
    (`docker build --build-arg`)."""
    given = build_args or {}
    global_args: dict[str, str] = {}
    stages: dict[str, dict[str, Any]] = {}
    stage: dict[str, Any] | None = None
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG":
            name, has_default, default = rest.partition("=")
            if stage is None:
                global_args[name] = given.get(name, default)
            else:  # a stage's ARG without a default takes the global one
                inherited = default if has_default else global_args.get(name, "")
                stage["args"][name] = given.get(name, inherited)
        elif keyword == "FROM":
            words = rest.split()
            # The images are x86-64 only (KataGo publishes no ARM Linux builds).
            assert words[0] == "--platform=linux/amd64", f"unpinned platform: FROM {rest}"
            words = words[1:]
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: FROM {rest}"
            stage = {"base": words[0], "args": {}, "run": [], "cmd": [], "shell": [], "env": {},
                     "expose": []}
            stages[words[2]] = stage
        elif stage is None:
            continue
        elif keyword in ("RUN", "CMD", "ENTRYPOINT"):
            expanded = _expand(rest, {**global_args, **stage["args"]})
            command = json.loads(expanded) if expanded.startswith("[") else expanded
            calls = katapool_invocations(command)
            stage["run" if keyword == "RUN" else "cmd"].extend(calls)
            if keyword == "RUN":
                stage["shell"].append(expanded)
            if keyword != "RUN":
                assert calls, f"{keyword} {rest} does not run katapool"
        elif keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                stage["env"][name] = value
        elif keyword == "EXPOSE":
            stage["expose"] += [int(p.split("/")[0]) for p in rest.split()]
    for stage in stages.values():
        stage["base"] = _expand(stage["base"], global_args)
    return stages


def _expand(text: str, values: dict[str, str]) -> str:
    """The shell's ``${NAME}``, ``${NAME:+word}`` and ``${NAME:-word}`` for build arguments
    (other variables are left as they are)."""
    def one(m: re.Match[str]) -> str:
        name, op, word = m.group(1), m.group(2), m.group(3) or ""
        if name not in values:
            return m.group(0)
        value = values[name]
        if op == ":+":
            return _expand(word, values) if value else ""
        if op == ":-":
            return value or _expand(word, values)
        return value
    return re.sub(r"\$\{(\w+)(?:(:[+-])((?:\$\{\w+\}|[^{}])*))?\}", one, text)


@pytest.fixture(scope="module")
def stages() -> dict[str, dict[str, Any]]:
    return dockerfile_stages()


def test_dockerfile_targets(stages: dict[str, dict[str, Any]]) -> None:
    assert {"cpu", "gpu"} <= set(stages)
    assert stages["cpu"]["base"].startswith("python:3.11")
    assert stages["gpu"]["base"].startswith("nvidia/cuda:")
    text = DOCKERFILE.read_text()
    assert not re.search(r"cmake|\bmake\b|git clone", text), "the images must not compile KataGo"


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_dockerfile_katapool_commands_parse(stages: dict[str, dict[str, Any]], target: str) -> None:
    stage = stages[target]
    installs = []
    for argv in stage["run"]:
        args = parse_cli(argv, f"Dockerfile ({target}) RUN")
        if args.func is engine_cmd.cmd_install:
            installs.append(args)
    assert installs, f"the {target} image installs no engine with `katapool engine install`"
    assert len(stage["cmd"]) == 1
    args = parse_cli(stage["cmd"][0], f"Dockerfile ({target}) CMD")
    assert args.func is daemon_cmd.cmd_start and not args.detach and args.no_dashboard
    port = split_address(args.listen[0].removeprefix("ws://").rstrip("/"))[1]
    assert port in stage["expose"]
    # The engine lives outside the data volume; the data dir is the one Compose mounts.
    assert stage["env"]["KATAPOOL_DATA_DIR"] == "/data"
    assert stage["env"]["KATAPOOL_KATAGO"] and stage["env"]["KATAPOOL_MODEL"]


def test_gpu_image_matches_the_release_asset(stages: dict[str, dict[str, Any]]) -> None:
    """The CUDA and cuDNN in the gpu image are the ones the guessed release asset was built for,
    so a change to katapool's release tags shows up here."""
    gpu = stages["gpu"]
    release = [a for a in (parse_cli(argv, "Dockerfile (gpu) RUN") for argv in gpu["run"])
               if a.func is engine_cmd.cmd_install and a.source == "release"]
    assert len(release) == 1, "the gpu image installs one official release"
    args = release[0]
    assert args.version and args.backend and not args.asset and not args.sha256
    backend = Backend.parse(args.backend)
    assert backend in (Backend.CUDA, Backend.TENSORRT)
    asset = release_asset(args.version, backend)
    cuda = re.search(r"cuda(\d+\.\d+)", asset)
    assert cuda, asset
    assert f":{cuda.group(1)}." in gpu["base"], f"{asset} needs CUDA {cuda.group(1)}; base {gpu['base']}"
    cudnn = re.search(r"cudnn(\d+)\.(\d+\.\d+)", asset)
    if cudnn:
        major, rest = cudnn.groups()
        assert f"libcudnn{major}={major}.{rest}." in DOCKERFILE.read_text(), \
            f"{asset} needs cuDNN {major}.{rest} in the gpu image"


def test_gpu_image_checks_a_given_sha256() -> None:
    digest = "0123456789abcdef" * 4
    stages = dockerfile_stages({"KATAGO_SHA256": digest, "KATAGO_VERSION": "1.99.0"})
    release = [a for a in (parse_cli(argv, "Dockerfile (gpu) RUN") for argv in stages["gpu"]["run"])
               if a.func is engine_cmd.cmd_install and a.source == "release"]
    assert [(a.version, a.sha256) for a in release] == [("1.99.0", digest)]


# --- systemd unit -------------------------------------------------------------------------------

def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) in order; systemd allows a key more than once."""
    out = []
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{UNIT.name}: not a setting: {raw}"
        out.append((section, key.strip(), value.strip()))
    return out


def unit_value(section: str, key: str) -> str | None:
    values = [v for s, k, v in unit_entries() if s == section and k == key]
    return values[-1] if values else None


def unit_environment() -> dict[str, str]:
    env = {}
    for section, key, value in unit_entries():
        if section == "Service" and key == "Environment":
            for item in shlex.split(value):
                name, _, val = item.partition("=")
                env[name] = val
    return env


def test_unit_starts_katapool_in_the_foreground() -> None:
    assert unit_value("Service", "Type") in ("simple", "exec")
    argv = shlex.split(unit_value("Service", "ExecStart") or "")
    assert argv and Path(argv[0]).is_absolute() and Path(argv[0]).name == "katapool", argv
    args = parse_cli(argv[1:], f"{UNIT.name} ExecStart")
    assert args.func is daemon_cmd.cmd_start
    assert not args.detach, "systemd supervises the main process: no --detach"
    assert args.no_dashboard
    assert args.config is not None and args.config.is_absolute()
    conf_dir = unit_value("Service", "ConfigurationDirectory")
    assert conf_dir and args.config.parent == Path("/etc") / conf_dir


def test_unit_reload_stop_restart_and_directories() -> None:
    reload = unit_value("Service", "ExecReload") or ""
    assert re.search(r"kill\s+-(s\s+)?(SIG)?HUP\s+\$MAINPID", reload), reload
    assert unit_value("Service", "Restart") == "on-failure"
    assert unit_value("Service", "KillMode") == "mixed", "SIGTERM to the daemon only: it drains"
    assert float(unit_value("Service", "TimeoutStopSec") or 0) > 60
    user = unit_value("Service", "User")
    assert user and user != "root"
    state = unit_value("Service", "StateDirectory")
    assert state and unit_environment()["KATAPOOL_DATA_DIR"] == f"/var/lib/{state}"
    runtime = unit_value("Service", "RuntimeDirectory")
    assert runtime and unit_value("Service", "RuntimeDirectoryMode") == "0700"
    # GPUs stay reachable (any allowed device, ProtectClock's implied one too, closes off the
    # rest) and JIT compilers keep working.
    for key in ("PrivateDevices", "ProtectClock", "MemoryDenyWriteExecute"):
        assert (unit_value("Service", key) or "no") in ("no", "false", "0"), key
    assert unit_value("Service", "DeviceAllow") is None
    assert (unit_value("Service", "DevicePolicy") or "auto") == "auto"


def test_unit_and_example_pool_file_agree() -> None:
    pool = load_pool_file(POOL_EXAMPLE)
    assert all(spec.preset in preset_names() for spec in pool.models.values())
    socket = Path(pool.listen.unix)
    assert socket.parent == Path("/run") / (unit_value("Service", "RuntimeDirectory") or "")
    assert pool.listen.websocket and is_loopback(split_address(pool.listen.websocket)[0])


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at this checkout's katapool.
    here = Path(sys.executable).with_name("katapool")
    assert here.exists(), f"no katapool script next to {sys.executable}"
    program = shlex.split(unit_value("Service", "ExecStart") or "")[0]
    unit = tmp_path / UNIT.name
    # (quoted: the checkout's path may hold a space, and systemd splits ExecStart on spaces)
    unit.write_text(UNIT.read_text().replace(f"ExecStart={program} ", f'ExecStart="{here}" '))
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if UNIT.name in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


# --- docs/deploy.md -----------------------------------------------------------------------------

def test_deploy_doc_commands_parse() -> None:
    """Every katapool command the page shows, in shell blocks and inline code."""
    text = DEPLOY_DOC.read_text()
    calls = []
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                calls += katapool_invocations(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        calls += [argv for argv in katapool_invocations(" ".join(span.split())) if argv]
    assert len(calls) >= 10, "docs/deploy.md shows hardly any katapool commands"
    for argv in calls:
        parse_cli_ray(argv, "docs/deploy.md")
    for link in re.findall(r"\]\(([^)#]+)", text):
        if "://" not in link:
            assert (DEPLOY_DOC.parent / link).exists(), f"docs/deploy.md links to missing {link}"


def test_deploy_doc_pool_files_load() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOY_DOC.read_text(), re.S)
    assert blocks
    for block in blocks:
        pool = parse_pool_file(block, "docs/deploy.md")
        assert all(spec.preset in preset_names() for spec in pool.models.values())

