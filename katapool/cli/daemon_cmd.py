"""``katapool start | status | stop | logs | reload``: the daemon and its controls."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from pydantic import ValidationError
from rich.live import Live

from katapool.cli.common import err, out, validation_message
from katapool.cli.shared_options import (
    add_config,
    add_device,
    add_human_model,
    add_model,
    add_override_config,
    add_preset,
    gpu_indices,
)
from katapool.config.generate import parse_override_pairs
from katapool.config.poolfile import PoolFile, default_pool_file, load_pool_file
from katapool.config.presets import load_preset
from katapool.devices.nvidia import list_nvidia_gpus
from katapool.errors import ConfigError, KatapoolError
from katapool.server import control
from katapool.server.daemon import Daemon, configure_logging
from katapool.server.dashboard import status_table
from katapool.server.state import StateDir, read_pid, read_token_file


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, help="daemon state (socket, pidfile, token, logs); "
                   "default: <data dir>/daemon")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("start", help="run the pool daemon (Unix socket, WebSocket, /metrics)",
                       description="Serve KataGo analysis from pools of engines: a Unix socket "
                                   "(default), WebSocket, /healthz and /metrics.")
    add_config(p, "pool file (katapool.yaml; not a KataGo config: those go in its "
               "models.NAME.configs); default: one model, members from --device or the best "
               "device found", many=False)
    add_model(p, "network (without --config; default: $KATAPOOL_MODEL or the engine's "
              "bundled one)")
    add_human_model(p, "human SL network (without --config)")
    add_override_config(p, "KataGo settings for the members, key=value[,key=value] "
                        "(repeatable; without --config)")
    add_device(p, "devices, one member each (without --config; default: every NVIDIA GPU "
               "found, else one member on the best device)")
    p.add_argument("--members", type=int, help="engine processes (without --config)")
    add_preset(p, "server", "preset for the generated configs (without --config)")
    p.add_argument("--listen", action="append", default=[], metavar="ADDRESS",
                   help="unix:PATH and/or ws://HOST:PORT (repeatable; replaces the file's; the "
                        "Unix socket is always on, as the control channel)")
    p.add_argument("--token-file", type=Path, metavar="FILE", help="the WebSocket's token, "
                   "where one is required (replaces listen.token_file; default: "
                   "$KATAPOOL_TOKEN, else <state dir>/token, made on first start)")
    p.add_argument("--ray", metavar="ADDRESS", help="run the members on a Ray cluster: its head's "
                   "HOST:PORT, or 'auto' for the cluster this machine belongs to (needs "
                   "katapool[ray]; see docs/cluster.md)")
    p.add_argument("--detach", action="store_true", help="run in the background (pidfile, logs)")
    p.add_argument("--no-dashboard", action="store_true", help="log lines instead of a live table")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _state_arg(p)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("status", help="the daemon's members and queues")
    p.add_argument("--json", action="store_true")
    _state_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stop", help="stop the daemon after its queries finish")
    p.add_argument("--timeout", type=float, default=90.0, help="then stop it hard (default 90 s)")
    _state_arg(p)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("reload", help="re-read the pool file; restart members one at a time")
    _state_arg(p)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("logs", help="the daemon's log, or a member's engine stderr")
    p.add_argument("member", nargs="?", help="member-0, main/member-1, ... (default: the daemon)")
    p.add_argument("-n", "--lines", type=int, default=40)
    p.add_argument("-f", "--follow", action="store_true")
    _state_arg(p)
    p.set_defaults(func=cmd_logs)


def _state(args: argparse.Namespace) -> StateDir:
    return StateDir(args.state_dir.expanduser().resolve()) if args.state_dir else StateDir.default()


def _socket(state: StateDir) -> Path:
    """The daemon's socket: as the running daemon reported it, else the default."""
    return state.current_socket()


_OWN_FLAGS = ("device", "members", "model", "human_model", "override_config")


def _pool_file(args: argparse.Namespace) -> PoolFile:
    ray_address = getattr(args, "ray", None)
    if args.config:
        if any(getattr(args, flag, None) for flag in _OWN_FLAGS) \
                or getattr(args, "preset", "server") != "server":
            raise ConfigError("--device/--members/--model/--human-model/--override-config/"
                              "--preset go in the pool file when --config is given")
        pool_file = load_pool_file(args.config)
        if ray_address:
            pool_file = _on_cluster(pool_file, ray_address)
    elif ray_address:
        if args.device:
            raise ConfigError(f"{args.device_flag}: on a Ray cluster Ray assigns the GPUs; give "
                              "--members (one GPU each) or a pool file")
        pool_file = _on_cluster(default_pool_file(None), ray_address)
        main = pool_file.models["main"]
        main.members = args.members or 1
    else:
        gpus = gpu_indices(args, "katapool start")
        if gpus is None and args.members is None:
            # No file, no flags: one member per NVIDIA GPU found (else one on the best device).
            found, _ = list_nvidia_gpus()
            gpus = [d.index for d in found] or None
        pool_file = default_pool_file(gpus)
        main = pool_file.models["main"]
        if args.members is not None:
            if args.members < 1:
                raise ConfigError(f"--members must be at least 1 (got {args.members})")
            main.members = args.members
    if not args.config:
        pool_file = _with_model_options(pool_file, args)
    if args.listen:
        unix, websocket = "default", None
        for address in args.listen:
            if address.startswith("unix:"):
                unix = address[5:] or "default"
            elif address.startswith("ws://"):
                websocket = address[5:].rstrip("/")
            else:
                raise ConfigError(f"--listen {address!r}: expected unix:PATH or ws://HOST:PORT")
        try:
            listen = type(pool_file.listen).model_validate(
                {**pool_file.listen.model_dump(), "unix": unix, "websocket": websocket})
        except ValidationError as exc:
            raise ConfigError(f"--listen: {validation_message(exc)}") from None
        pool_file = pool_file.model_copy(update={"listen": listen})
    if getattr(args, "token_file", None) is not None:
        path = args.token_file.expanduser().resolve()
        if path.exists():
            read_token_file(path)  # a bad one is reported here, before detaching
        listen = pool_file.listen.model_copy(update={"token_file": str(path)})
        pool_file = pool_file.model_copy(update={"listen": listen})
    return pool_file


_MODEL_FLAGS = {"path": "--model", "human_model": "--human-model",
                "overrides": "--override-config", "preset": "--preset"}


def _with_model_options(pool_file: PoolFile, args: argparse.Namespace) -> PoolFile:
    """The generated file's one model, with the network, human network, KataGo settings and
    preset from the command line (checked as the same keys in a pool file would be)."""
    main = pool_file.models["main"]
    values = main.model_dump()
    if args.model:
        values["path"] = str(args.model)
    if getattr(args, "human_model", None):
        values["human_model"] = str(args.human_model)
    values["preset"] = getattr(args, "preset", main.preset)
    load_preset(values["preset"])  # a bad name fails here, not in the daemon's log
    overrides = parse_override_pairs(getattr(args, "override_config", None) or [])
    values["overrides"] = {**main.overrides, **overrides}
    try:
        spec = type(main).model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        flag = _MODEL_FLAGS.get(field, field)
        key = (first.get("ctx") or {}).get("key")
        raise ConfigError(f"{flag}{f' {key}' if key else ''}: {validation_message(exc)}") from None
    return pool_file.model_copy(update={"models": {**pool_file.models, "main": spec}})


def _on_cluster(pool_file: PoolFile, address: str) -> PoolFile:
    from katapool.cluster import require_ray

    require_ray()  # a missing extra is reported before anything starts
    try:
        return PoolFile.model_validate({**pool_file.model_dump(), "ray": address})
    except ValidationError as exc:
        raise ConfigError(f"--ray {address!r}: {validation_message(exc)}") from None


def cmd_start(args: argparse.Namespace) -> int:
    state = _state(args)
    pool_file = _pool_file(args)  # errors before detaching, where the user sees them
    state.ensure()
    running = read_pid(state.pidfile)
    if running is not None:
        raise KatapoolError(f"a katapool daemon is already running (pid {running})")
    if args.detach:
        return _detach(args, state)
    log_dir = Path(pool_file.log_dir).expanduser() if pool_file.log_dir else state.logs
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / "daemon.log"
    show_dashboard = not args.no_dashboard and err.is_terminal
    configure_logging(log_file, args.log_level, to_stderr=not show_dashboard)
    regenerate = None if args.config else (lambda: _pool_file(args))
    return asyncio.run(_run(Daemon(pool_file, state, file_path=args.config,
                                   regenerate=regenerate), state, show_dashboard))


async def _run(daemon: Daemon, state: StateDir, show_dashboard: bool) -> int:
    def started(d: Daemon) -> None:
        if d.socket_path is not None:
            (state.root / "socket").write_text(f"{d.socket_path}\n")
        for address in d.addresses():
            err.print(f"katapool: listening on {address}")

    if not show_dashboard:
        return await daemon.run(on_started=started)
    task = asyncio.ensure_future(daemon.run(on_started=started))
    with Live(console=err, refresh_per_second=2, transient=False) as live:
        while not task.done():
            if daemon.hub is not None:
                live.update(status_table(daemon.hub.status()))
            await asyncio.wait({task}, timeout=1.0)
    return task.result()


def _detach(args: argparse.Namespace, state: StateDir) -> int:
    argv = [sys.executable, "-m", "katapool", "start", "--no-dashboard",
            "--state-dir", str(state.root), "--log-level", args.log_level]
    for flag in ("config", "members", "model", "human_model", "ray"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    if args.device:
        argv += ["--device", ",".join(r.spec for r in args.device)]
    for override in args.override_config:
        argv += ["--override-config", override]
    if args.preset != "server":
        argv += ["--preset", args.preset]
    for address in args.listen:
        argv += ["--listen", address]
    if args.token_file is not None:
        argv += ["--token-file", str(args.token_file.expanduser().resolve())]
    out_file = state.logs / "daemon.out"
    with open(out_file, "ab") as sink:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                 start_new_session=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            tail = out_file.read_text(errors="replace").strip().splitlines()[-5:]
            raise KatapoolError(f"the daemon exited ({code}) while starting: " + " | ".join(tail))
        try:
            status = control.request(_socket(state), "katapool_status", timeout=5)
        except KatapoolError:
            time.sleep(0.3)
            continue
        if status.get("ready"):
            err.print(f"katapool: daemon started (pid {child.pid}); logs in {state.logs}")
            for address in status.get("addresses", []):
                err.print(f"katapool: listening on {address}")
            return 0
        time.sleep(0.3)
    raise KatapoolError(f"the daemon (pid {child.pid}) was not ready within 900 s; see {state.logs}")


def cmd_status(args: argparse.Namespace) -> int:
    state = _state(args)
    status = control.request(_socket(state), "katapool_status")
    if args.json:
        out.out(json.dumps({k: v for k, v in status.items() if k not in ("id", "action")}))
        return 0
    out.print(status_table(status, title=f"katapool daemon pid {status['pid']}"))
    for address in status.get("addresses", []):
        out.print(f"  {address}")
    outcomes = status.get("outcomes") or {}
    if outcomes:
        out.print("  responses: " + ", ".join(f"{k} {v}" for k, v in outcomes.items()))
    for line in router_lines(status):
        out.print(f"  {line}")
    return 0


def router_lines(status: dict[str, Any]) -> list[str]:
    """What each model's router knows, as short lines: its queue and what went wrong."""
    lines = []
    for model in status.get("models", []):
        stats = model.get("router") or {}
        waiting = model.get("oldest_waiting_s")
        oldest = model.get("oldest_query_s")
        lines.append(
            f"{model['name']}: {model.get('queue', 0)} queries in flight"
            + (f" (oldest {oldest:g} s)" if oldest is not None else "")
            + f", {model.get('waiting', 0)} waiting"
            + (f" (oldest {waiting:g} s)" if waiting is not None else "")
            + f"; re-routed {stats.get('rerouted', 0)} queries ({stats.get('rerouted_turns', 0)}"
            f" turns), quarantined {stats.get('quarantined', 0)}, duplicates dropped "
            f"{stats.get('duplicates_dropped', 0)}")
        for member in model.get("members", []):
            causes = member.get("restart_causes") or {}
            garbage = member.get("garbage_lines") or 0
            if causes or garbage:
                text = ", ".join(f"{c} {n}" for c, n in sorted(causes.items())) or "none"
                lines.append(f"{model['name']}/{member['name']}: restarts by cause: {text}; "
                             f"garbage engine lines {garbage}")
    return lines


def cmd_stop(args: argparse.Namespace) -> int:
    state = _state(args)
    pid = read_pid(state.pidfile)
    try:
        control.request(_socket(state), "katapool_stop", timeout=10)
    except control.DaemonNotRunning:
        if pid is None:
            raise
        os.kill(pid, signal.SIGTERM)  # alive but its socket is gone: ask with a signal
    if pid is None:
        return 0
    if _wait_gone(pid, args.timeout):
        err.print(f"katapool: daemon (pid {pid}) stopped")
        return 0
    err.print(f"katapool: daemon (pid {pid}) still running after {args.timeout:g} s: killing it")
    os.kill(pid, signal.SIGKILL)  # its engines die with it (parent-death signal)
    _wait_gone(pid, 10)
    state.pidfile.unlink(missing_ok=True)
    return 1


def _wait_gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its parent counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def cmd_reload(args: argparse.Namespace) -> int:
    reply = control.request(_socket(_state(args)), "katapool_reload", timeout=3600)
    models: dict[str, Any] = reply.get("models", {})
    for name, what in models.items():
        out.print(f"{name}: {what}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise ConfigError(f"--lines cannot be negative (got {args.lines})")
    state = _state(args)
    logs = state.logs
    try:
        status = control.request(_socket(state), "katapool_status", timeout=5)
        logs = Path(status.get("log_dir") or logs)
    except KatapoolError:
        pass
    if args.member is None:
        path = logs / "daemon.log"
    else:
        name = args.member.replace("/", "-")
        if name.isdigit():
            name = f"member-{name}"
        matches = sorted(logs.glob(f"*{name}.stderr.log")) if "-member-" not in name \
            else [logs / f"{name}.stderr.log"]
        matches = [m for m in matches if m.exists()]
        if not matches:
            known = ", ".join(sorted(p.name.removesuffix(".stderr.log")
                                     for p in logs.glob("*.stderr.log"))) or "none"
            raise KatapoolError(f"no log for member {args.member!r} in {logs} (members: {known})")
        if len(matches) > 1:
            raise KatapoolError(f"{args.member!r} is ambiguous: "
                                + ", ".join(m.name.removesuffix(".stderr.log") for m in matches))
        path = matches[0]
    if not path.exists():
        raise KatapoolError(f"no log yet at {path}")
    lines = path.read_text(errors="replace").splitlines()[-args.lines:] if args.lines > 0 else []
    for line in lines:
        out.out(line)
    if args.follow:
        try:
            follow(path, lambda line: out.out(line))
        except KeyboardInterrupt:
            return 0
    return 0


def follow(path: Path, emit: Callable[[str], None], stop: Callable[[], bool] = lambda: False,
           poll: float = 0.3) -> None:
    """Emit each line appended to ``path`` from now on, until ``stop()``. Follows the name, not
    the file: when the log is rotated (renamed away, as engine logs are at 5 MB, or by
    logrotate) the old file's last lines come first, then the new file's from its start; a log
    truncated in place is read again from its start."""
    fh = open(path, "rb")  # noqa: SIM115 (replaced on rotation)
    fh.seek(0, os.SEEK_END)
    partial = b""

    def drain() -> None:
        nonlocal partial
        data = partial + fh.read()
        *lines, partial = data.split(b"\n")
        for line in lines:
            emit(line.decode(errors="replace").rstrip("\r"))

    try:
        while not stop():
            drain()
            try:
                now = os.stat(path)
            except FileNotFoundError:  # between the rename and the new file
                time.sleep(poll)
                continue
            if now.st_ino != os.fstat(fh.fileno()).st_ino:
                drain()  # what was written to the old file before it was renamed
                if partial:
                    emit(partial.decode(errors="replace"))
                    partial = b""
                fh.close()
                fh = open(path, "rb")  # noqa: SIM115
                continue
            if now.st_size < fh.tell():  # truncated in place (logrotate's copytruncate)
                fh.seek(0)
                partial = b""
                continue
            time.sleep(poll)
    finally:
        fh.close()
