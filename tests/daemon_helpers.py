"""Starting and stopping a real `katapool start` for the tests, as a user would."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import Katapool
from katapool.server import control


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    state: Path
    socket: Path
    status: dict[str, Any]  # katapool_status once every member was ready

    @property
    def ws_url(self) -> str:
        return next(a for a in self.status["addresses"] if a.startswith("ws://")).split(" ")[0]


@contextlib.contextmanager
def running_daemon(kp: Katapool, root: Path, *args: str,
                   env: dict[str, str] | None = None) -> Iterator[Started]:
    """`katapool start ARGS --state-dir root/state` in the foreground, until every member is
    ready (hang guard: 300 s); stopped with `katapool stop` afterwards."""
    state = root / "state"
    log = open(root / "daemon.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "katapool", "start", *args,
                             "--state-dir", str(state), "--no-dashboard"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env={**kp.env, **(env or {})})
    try:
        deadline = time.monotonic() + 300
        status: dict[str, Any] = {}
        sock = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (root / "daemon.out").read_text()
            sock = Path((state / "socket").read_text().strip()) if (state / "socket").exists() \
                else None
            if sock is not None:
                try:
                    status = control.request(sock, "katapool_status", timeout=5)
                except Exception:
                    status = {}
                members = [m for model in status.get("models", []) for m in model["members"]]
                if members and all(m["state"] == "ready" for m in members):
                    break
            time.sleep(0.3)
        else:
            raise AssertionError("daemon not ready:\n" + (root / "daemon.out").read_text())
        assert sock is not None
        yield Started(proc, state, sock, status)
    finally:
        if proc.poll() is None:
            kp.run("stop", "--state-dir", str(state), timeout=120)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


@dataclass
class Daemon:
    """A daemon started by ``start_daemon``; ``stop_daemon`` stops it."""

    proc: subprocess.Popen[bytes]
    state: Path
    socket: Path
    http: str
    kp: Katapool
    _running: contextlib.ExitStack

    def status(self) -> dict[str, Any]:
        return control.request(self.socket, "katapool_status")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.http + "metrics", timeout=10) as r:
            return str(r.read().decode())


def start_daemon(kp: Katapool, root: Path, pool_file: str) -> Daemon:
    """`katapool start --config` with ``pool_file``, once every member is ready."""
    config = root / "katapool.yaml"
    config.write_text(pool_file)
    running = contextlib.ExitStack()
    started = running.enter_context(running_daemon(kp, root, "--config", str(config)))
    http = next((a for a in started.status["addresses"] if a.startswith("http://")
                 and a.endswith("/healthz")), "").removesuffix("healthz")
    return Daemon(started.proc, started.state, started.socket, http, kp, running)


def stop_daemon(daemon: Daemon) -> None:
    daemon._running.close()
