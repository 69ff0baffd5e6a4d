"""A reload never freezes the daemon: models whose settings did not change keep running, and
while a reload probes a slow engine, /healthz and the other models keep answering.

The daemon runs as `katapool start` on the real engine, reached through a FAKE WRAPPER
(named as such): a shell script that execs the real KataGo, except that its `version` can be
held until the test lets it go — a slow `katago version` (a wrapper, a cold disk, an
AppImage mounting) on demand.
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import running_daemon

from conftest import G170, Katapool
from katapool.client import Client, Position
from katapool.server import control

pytestmark = pytest.mark.engine

POOL_FILE = """\
engine: {engine}
models:
  a:
    path: {g170}
    preset: {preset_a}
  b:
    path: {g170}
listen:
  unix: default
  websocket: 127.0.0.1:0
policy:
  functional_interval: 3600
"""

WRAPPER = """\
#!/bin/sh
# FAKE WRAPPER for katapool's tests: the real KataGo; `version` waits while {dir}/hold exists
# (revision {revision})
if [ "$1" = "version" ] && [ -e "{dir}/hold" ]; then
  touch "{dir}/probing"
  while [ ! -e "{dir}/release" ]; do sleep 0.05; done
fi
exec "{real}" "$@"
"""


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    root: Path
    config: Path
    wrapper: Path
    real: Path
    socket: Path
    http: str
    kp: Katapool

    def write(self, preset_a: str = "server") -> None:
        self.config.write_text(POOL_FILE.format(engine=self.wrapper, g170=G170, preset_a=preset_a))

    def write_wrapper(self, revision: int) -> None:
        self.wrapper.write_text(WRAPPER.format(dir=self.root, real=self.real, revision=revision))
        self.wrapper.chmod(0o755)

    def status(self) -> dict[str, Any]:
        return control.request(self.socket, "katapool_status", timeout=10)

    def pids(self, model: str) -> list[int]:
        return [m["pid"] for m in next(x for x in self.status()["models"]
                                       if x["name"] == model)["members"]]

    def reload(self) -> subprocess.CompletedProcess[str]:
        return self.kp.run("reload", "--state-dir", str(self.root / "state"), timeout=600)


@pytest.fixture(scope="module")
def running(kp: Katapool, katago: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("reload-probe")
    handle = Running(None, root, root / "katapool.yaml", root / "katago-wrapper", katago,  # type: ignore[arg-type]
                     Path(), "", kp)
    handle.write_wrapper(0)
    handle.write()
    with running_daemon(kp, root, "--config", str(handle.config)) as started:
        handle.proc, handle.socket = started.proc, started.socket
        handle.http = next(a for a in started.status["addresses"]
                           if a.startswith("http://")).rsplit("/", 1)[0]
        try:
            yield handle
        finally:
            (root / "release").touch()  # a held probe must not hold up the stop


def test_reload_restarts_only_the_models_that_changed(running: Running) -> None:
    before_a, before_b = running.pids("a"), running.pids("b")
    same = running.reload()
    assert same.returncode == 0, same.stderr
    assert "a: unchanged" in same.stdout and "b: unchanged" in same.stdout, same.stdout
    assert running.pids("a") == before_a and running.pids("b") == before_b

    running.write(preset_a="desktop")
    changed = running.reload()
    assert changed.returncode == 0, changed.stderr
    assert "a: restarted member by member" in changed.stdout, changed.stdout
    assert "b: unchanged" in changed.stdout, changed.stdout
    assert running.pids("a") != before_a and running.pids("b") == before_b


def test_healthz_and_other_models_answer_while_a_reload_probes_a_slow_engine(
        running: Running) -> None:
    """The reload finds a new engine build (the wrapper rewritten) and runs its `version`,
    which the test holds. Meanwhile every /healthz poll and a query on model "b" must be
    answered; the old daemon ran the probe on its event loop and answered nothing."""
    root = running.root
    (root / "hold").touch()
    running.write_wrapper(10)  # a new build of the binary: its probe is not cached
    result: dict[str, Any] = {}
    reload = threading.Thread(target=lambda: result.update(done=running.reload()))
    reload.start()
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + 120
        while not (root / "probing").exists():
            assert time.monotonic() < deadline, "the reload never probed the engine"
            assert reload.is_alive(), result
            time.sleep(0.05)
        with Client.connect(f"unix:{running.socket}") as client:
            answer = client.analyze(Position.from_moves(["Q16"]), visits=4, model="b",
                                    timeout=60)
            held_until = time.monotonic() + 2.0
            while time.monotonic() < held_until:
                start = time.perf_counter()
                # A hang guard, far above an answer's normal time: not a timing assertion.
                with urllib.request.urlopen(f"{running.http}/healthz", timeout=10) as resp:
                    assert resp.status == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.1)
        assert not (root / "release").exists() and reload.is_alive(), "the probe was not held"
    finally:
        (root / "release").touch()
        reload.join(300)
    assert answer.visits >= 1
    done = result["done"]
    assert done.returncode == 0, done.stderr
    assert len(latencies) >= 5
    print(f"/healthz during a held engine probe: {len(latencies)} polls, median "
          f"{statistics.median(latencies) * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms")
