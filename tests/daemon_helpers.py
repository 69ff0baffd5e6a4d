"""Start and stop a real `katapool start` daemon from a test, as a user would."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import Katapool
from katapool.server import control


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    state: Path
    socket: Path
    http: str
    kp: Katapool

    def status(self) -> dict[str, Any]:
        return control.request(self.socket, "katapool_status")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.http + "metrics", timeout=10) as r:
            return str(r.read().decode())


def start_daemon(kp: Katapool, root: Path, pool_file: str) -> Daemon:
    """`katapool start` as a user runs it; returns once every member is ready."""
    state, config = root / "state", root / "katapool.yaml"
    config.write_text(pool_file)
    log = open(root / "daemon.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "katapool", "start", "--config", str(config),
                             "--state-dir", str(state), "--no-dashboard"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=kp.env)
    log.close()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, (root / "daemon.out").read_text()
        recorded = state / "socket"
        if recorded.exists():
            sock = Path(recorded.read_text().strip())
            try:
                status = control.request(sock, "katapool_status", timeout=5)
            except Exception:
                status = {}
            members = [m for model in status.get("models", []) for m in model["members"]]
            if members and all(m["state"] == "ready" for m in members):
                http = next((a for a in status["addresses"] if a.startswith("http://")
                             and a.endswith("/healthz")), "").removesuffix("healthz")
                return Daemon(proc, state, sock, http, kp)
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("daemon not ready:\n" + (root / "daemon.out").read_text())


def stop_daemon(daemon: Daemon) -> None:
    if daemon.proc.poll() is None:
        daemon.kp.run("stop", "--state-dir", str(daemon.state), timeout=120)
        try:
            daemon.proc.wait(30)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
