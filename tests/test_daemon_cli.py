"""The daemon's command-line life on the real engine: `start --detach`, `status`, `logs`,
a second start refused, browser origins refused, `stop`."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import websocket

from conftest import G170, Katapool

pytestmark = pytest.mark.engine


def test_detach_status_logs_stop(kp: Katapool, tmp_path: Path) -> None:
    state = tmp_path / "st"
    common = ["--state-dir", str(state)]
    started = kp.run("start", "--detach", "--members", "1", "--model", str(G170),
                     "--listen", "unix:", "--listen", "ws://127.0.0.1:0", *common, timeout=300)
    assert started.returncode == 0, started.stderr
    assert "daemon started" in started.stderr and started.stdout == ""
    try:
        status = json.loads(kp.run("status", "--json", *common, check=True).stdout)
        (member,) = status["models"][0]["members"]
        assert member["state"] == "ready" and psutil.pid_exists(member["pid"])
        again = kp.run("start", "--detach", *common)
        assert again.returncode != 0 and "already running" in again.stderr

        log = kp.run("logs", *common, check=True).stdout
        assert "listening" in log and "ready" in log
        engine_log = kp.run("logs", "member-0", "-n", "200", *common, check=True).stdout
        assert "Started, ready to begin handling requests" in engine_log
        unknown = kp.run("logs", "member-7", *common)
        assert unknown.returncode != 0 and "main-member-0" in unknown.stderr

        ws = next(a for a in status["addresses"] if a.startswith("ws://"))
        host = ws.removeprefix("ws://").rstrip("/")
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(ws, origin="https://evil.example", timeout=10)
        assert refused.value.status_code == 403
        fine = websocket.create_connection(ws, origin=f"http://{host}", timeout=10)
        fine.send(json.dumps({"id": "v", "action": "query_version"}))
        assert json.loads(fine.recv())["version"] == "1.18.1"
        fine.close()
    finally:
        stopped = kp.run("stop", *common, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not (state / "katapool.pid").exists()
    assert not psutil.pid_exists(member["pid"]) or \
        psutil.Process(member["pid"]).status() == psutil.STATUS_ZOMBIE
