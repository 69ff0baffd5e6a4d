"""What the router knows is visible: /metrics and `katapool status` show re-routed turns,
restarts by cause and the queue; KataGo's per-query warnings reach the Python client."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon, start_daemon, stop_daemon

from conftest import G170, SAMPLE_SGF, Katapool
from katapool.client import AsyncClient, Client, Position

POOL_FILE = """\
models:
  main:
    path: {g170}
    members: 2
listen:
  websocket: 127.0.0.1:0
policy:
  crash_budget: 20
"""


@pytest.fixture(scope="module")
def daemon(kp: Katapool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    handle = start_daemon(kp, tmp_path_factory.mktemp("visible"), POOL_FILE.format(g170=G170))
    yield handle
    stop_daemon(handle)


def _metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from the Prometheus text, or None if absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.index("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.engine
def test_metrics_show_rerouted_turns_after_a_member_is_killed(daemon: Daemon) -> None:
    """BAR: a member SIGKILLed while a whole game is being analysed: every turn still gets its
    one result, and /metrics (and `katapool status`) show the turns that were re-routed and
    the restart, with its cause."""
    before = _metric(daemon.metrics(), "katapool_rerouted_turns_total", model="main") or 0.0
    wanted = list(range(30))
    got: list[int] = []
    failures: list[BaseException] = []

    def analyse() -> None:
        try:
            with Client.connect(f"unix:{daemon.socket}") as client:
                got.extend(a.turn_number for a in client.analyze_game(SAMPLE_SGF, visits=8,
                                                                      turns=wanted))
        except BaseException as exc:  # reported below
            failures.append(exc)

    worker = threading.Thread(target=analyse)
    worker.start()
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        busy = [m for m in daemon.status()["models"][0]["members"]
                if m["in_flight"] and m["pid"] and m["state"] == "ready"]
        if busy and got:  # under load: results are coming out, work is still in flight
            victim = busy[0]
        else:
            time.sleep(0.05)
    assert victim is not None, "the game never loaded a member"
    os.kill(victim["pid"], signal.SIGKILL)
    worker.join(600)
    assert not worker.is_alive() and not failures, failures
    assert got == wanted  # nothing lost, nothing twice

    text = daemon.metrics()
    rerouted = _metric(text, "katapool_rerouted_turns_total", model="main")
    assert rerouted is not None and rerouted > before, text
    assert (_metric(text, "katapool_rerouted_queries_total", model="main") or 0) >= 1
    died = _metric(text, "katapool_member_restarts_by_cause_total", model="main",
                   member=victim["name"], cause="died")
    assert died is not None and died >= 1, text
    for name in ("katapool_quarantined_queries_total", "katapool_duplicates_dropped_total",
                 "katapool_engine_garbage_lines_total", "katapool_oldest_waiting_seconds",
                 "katapool_oldest_query_seconds"):
        assert _metric(text, name, model="main") is not None, name

    shown = daemon.kp.run("status", "--state-dir", str(daemon.state), check=True).stdout
    assert "re-routed" in shown and "restarts by cause: died" in shown, shown
    raw = json.loads(daemon.kp.run("status", "--json", "--state-dir", str(daemon.state),
                                   check=True).stdout)
    model = raw["models"][0]
    assert model["router"]["rerouted_turns"] == rerouted
    member = next(m for m in model["members"] if m["name"] == victim["name"])
    assert member["restart_causes"].get("died", 0) >= 1


@pytest.mark.engine
def test_katago_warnings_reach_the_python_client(daemon: Daemon) -> None:
    """A mistyped setting is noticed: KataGo's per-query warnings come through the daemon to
    the client, on every result (and on the stream), each once, even when the query is split
    over both members; a raw request sees every warning KataGo gave."""
    position = Position.from_moves(["Q16", "D4"])
    with Client.connect(f"unix:{daemon.socket}") as client:
        result = client.analyze(position, visits=2, timeout=120, wideRootNoize=0.04)
        assert [(w.field, "wideRootNoize" in w.message) for w in result.warnings] == \
            [("overrideSettings", True)]
        assert "warnings" not in result.raw()  # KataGo's response stays KataGo's

        game = list(client.analyze_game(SAMPLE_SGF, visits=2, turns=list(range(10)),
                                        wideRootNoize=0.04))
        assert [a.turn_number for a in game] == list(range(10))
        for a in game:
            assert [w.field for w in a.warnings] == ["overrideSettings"]

        with client.analyze_stream(position, visits=2, every=0.1, wideRootNoize=0.04) as stream:
            last = list(stream)[-1]
        assert not last.is_during_search and len(last.warnings) == 1

    async def raw() -> list[dict[str, Any]]:
        async with await AsyncClient.connect(f"unix:{daemon.socket}") as client:
            query = {**position.query(), "maxVisits": 2, "foo": 1, "analyzeTurns": list(range(3)),
                     "overrideSettings": {"wideRootNoize": 0.04}}
            return [m async for m in client.request(query) if "warning" in m]

    warnings = asyncio.run(raw())
    assert sorted(str(w.get("field")) for w in warnings) == ["foo", "overrideSettings"]


def test_logs_follow_goes_on_across_rotation(tmp_path: Path) -> None:
    """`katapool logs -f` on a member log that rotates (the engine logs rotate at 5 MB, here
    at a few hundred bytes with the same handler class) shows every line written, in order,
    before and after each rotation; no daemon needed (it reads the state directory's logs)."""
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    path = logs / "main-member-0.stderr.log"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=400, backupCount=2)
    handler.setFormatter(logging.Formatter("%(message)s"))

    def write(text: str) -> None:
        handler.emit(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))

    write("before following")
    proc = subprocess.Popen([sys.executable, "-m", "katapool", "logs", "main/member-0", "-f",
                             "-n", "0", "--state-dir", str(tmp_path / "state")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert proc.stdout is not None
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(line.rstrip("\n") for line in proc.stdout),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while "ready" not in seen:  # the follower is at the end of the file
            write("ready")
            time.sleep(0.5)
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        wanted = [f"line {i:03d} " + "x" * 40 for i in range(60)]  # about six rotations
        for text in wanted:  # a rotation a second: still far faster than 5 MB logs rotate
            write(text)
            time.sleep(0.12)
        while seen[-1:] != wanted[-1:] and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
        handler.close()
    assert [s for s in seen if s.startswith("line ")] == wanted
    assert "before following" not in seen
    assert (logs / "main-member-0.stderr.log.1").exists()  # it did rotate
