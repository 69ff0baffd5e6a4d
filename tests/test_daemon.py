"""The daemon on the real engine: `katapool start` with two models, reached at once by the
sync client, the async client and a plain WebSocket client (KaTrain's own library,
websocket-client); limits and tokens; reload under load; `katapool stop` leaves nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import websocket  # websocket-client: what KaTrain's remote engine uses
from daemon_helpers import running_daemon

from conftest import G170, SAMPLE_SGF, SHORT_SGF, TRANSFORMER, Katapool
from katapool.client import AsyncClient, Client, ConnectionLost, Position
from katapool.game.record import load_sgf
from katapool.server import control

pytestmark = pytest.mark.engine

POOL_FILE = """\
models:
  main:
    path: {g170}
    members: 2
    preset: {main_preset}
  tf:
    path: {tf}
    members: {tf_members}
listen:
  unix: default
  websocket: 127.0.0.1:0
  require_token: true
limits:
  max_visits: 2000
  per_client_concurrency: 64
  max_line_bytes: 65536
policy:
  functional_interval: 5
"""


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    state: Path
    config: Path
    socket: Path
    ws_url: str
    token: str
    kp: Katapool

    def status(self) -> dict[str, Any]:
        return control.request(self.socket, "katapool_status")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.kp.run(*args, "--state-dir", str(self.state), timeout=timeout)

    def members(self, model: str) -> list[dict[str, Any]]:
        return next(m["members"] for m in self.status()["models"] if m["name"] == model)

    def write_config(self, tf_members: int, main_preset: str = "server") -> None:
        self.config.write_text(POOL_FILE.format(g170=G170, tf=TRANSFORMER, tf_members=tf_members,
                                                main_preset=main_preset))


@pytest.fixture(scope="module")
def daemon(kp: Katapool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("daemon")
    state, config = root / "state", root / "katapool.yaml"
    config.write_text(POOL_FILE.format(g170=G170, tf=TRANSFORMER, tf_members=1,
                                       main_preset="server"))
    with running_daemon(kp, root, "--config", str(config)) as started:
        state, sock = started.state, started.socket
        token = (state / "token").read_text().strip()
        assert (state / "token").stat().st_mode & 0o777 == 0o600
        assert sock.stat().st_mode & 0o777 == 0o600
        yield Daemon(started.proc, state, config, sock, started.ws_url, token, kp)


def _positions(count: int) -> list[Position]:
    record = load_sgf(SAMPLE_SGF)
    return [Position.from_record(record, 3 * i) for i in range(count)]


def _check_final(msg: dict[str, Any], qid: str, turn: int) -> None:
    assert msg["id"] == qid and msg["turnNumber"] == turn and msg["isDuringSearch"] is False
    assert msg["rootInfo"]["visits"] >= 1 and msg["moveInfos"], msg
    assert all(m["move"] == "pass" or m["move"][0] in "ABCDEFGHJKLMNOPQRST"
               for m in msg["moveInfos"])


def _ws_query(qid: str, position: Position, **extra: Any) -> str:
    return json.dumps(position.query(id=qid, **{"maxVisits": 8, **extra}))


def test_three_clients_at_once(daemon: Daemon) -> None:
    """Sync client, async client and a plain WebSocket client, concurrently, through one
    daemon serving two models; every answer checked."""
    positions = _positions(12)
    failures: list[BaseException] = []
    results: dict[str, Any] = {}

    def guarded(name: str, work: Any) -> threading.Thread:
        def run() -> None:
            try:
                results[name] = work()
            except BaseException as exc:  # reported below, with the client's name
                failures.append(AssertionError(f"{name}: {exc!r}"))
        return threading.Thread(target=run, name=name)

    def sync_work() -> int:
        with Client.connect(f"unix:{daemon.socket}") as client:
            for p in positions[:6]:
                r = client.analyze(p, visits=8, timeout=120)
                assert not r.is_during_search and r.visits >= 8 and r.best_move
                assert r.turn_number == len(p.moves)
            turns = [a.turn_number for a in client.analyze_game(SAMPLE_SGF, visits=2,
                                                                turns=list(range(10)))]
            assert turns == list(range(10))
        return 7

    async def async_work() -> int:
        async with await AsyncClient.connect(f"unix:{daemon.socket}") as client:
            main = [client.analyze(p, visits=8, timeout=120) for p in positions[:8]]
            tf = [client.analyze(p, visits=8, timeout=120, model="tf") for p in positions[8:]]
            done = await asyncio.gather(*main, *tf)
            for p, r in zip(positions, done, strict=True):
                assert r.turn_number == len(p.moves) and r.visits >= 8 and r.root_info
            models = await client.query_models()
            assert {m["katapoolModel"] for m in models} == {"main", "tf"}
        return len(done)

    def ws_work() -> int:
        ws = websocket.create_connection(f"{daemon.ws_url}?token={daemon.token}", timeout=120)
        try:
            for i, p in enumerate(positions[:10]):
                ws.send(_ws_query(f"ws-{i}", p))
            finals: dict[str, dict[str, Any]] = {}
            while len(finals) < 10:
                frame = ws.recv()
                assert frame.endswith("\n") and frame.count("\n") == 1  # one JSON line a frame
                msg = json.loads(frame)
                assert msg["id"] not in finals, "a second final for one query"
                finals[msg["id"]] = msg
            for i, p in enumerate(positions[:10]):
                _check_final(finals[f"ws-{i}"], f"ws-{i}", len(p.moves))
        finally:
            ws.close()
        return len(finals)

    threads = [guarded("sync", sync_work), guarded("async", lambda: asyncio.run(async_work())),
               guarded("websocket", ws_work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures
    assert results == {"sync": 7, "async": 12, "websocket": 10}
    # Both models answered: the transformer member did the "tf" queries.
    assert sum(m["visits"] for m in daemon.members("tf")) >= 4 * 8
    assert sum(m["visits"] for m in daemon.members("main")) >= 20 * 8

    shown = daemon.cli("status")
    assert shown.returncode == 0, shown.stderr
    for name in ("member-0", "member-1", "main", "tf", "ready"):
        assert name in shown.stdout
    as_json = json.loads(daemon.cli("status", "--json").stdout)
    assert [len(m["members"]) for m in as_json["models"]] == [2, 1]
    assert all(isinstance(m["pid"], int) and m["rss_mb"] > 0
               for model in as_json["models"] for m in model["members"])


def test_katrain_framing(daemon: Daemon) -> None:
    """What KaTrain's remote engine does: ws:// URL (token in it), one query per text frame
    or several newline-separated, partial results, terminate, malformed JSON."""
    p = _positions(1)[0]
    ws = websocket.create_connection(f"{daemon.ws_url}?token={daemon.token}", timeout=60)
    try:
        ws.send(_ws_query("a", p) + "\n" + _ws_query("b", p, maxVisits=4))
        ws.send('{"id": "broken", "moves": [')
        ws.send(json.dumps(p.query(id="ponder", maxVisits=1500, reportDuringSearchEvery=0.2,
                                   overrideSettings={"reportAnalysisWinratesAs": "BLACK"})))
        seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
        terminated = False
        deadline = time.monotonic() + 60
        def finished() -> bool:  # the three queries may answer in any order
            return any(m.get("isDuringSearch") is False for m in seen["ponder"]) \
                and bool(seen["a"]) and bool(seen["b"])

        while not finished():
            assert time.monotonic() < deadline, dict(seen)
            for line in ws.recv().splitlines():  # KaTrain splits frames into lines
                msg = json.loads(line)
                seen[msg.get("id", "")].append(msg)
            partials = [m for m in seen["ponder"] if m.get("isDuringSearch")]
            if len(partials) >= 2 and not terminated:
                ws.send(json.dumps({"id": "t1", "action": "terminate", "terminateId": "ponder"}))
                terminated = True
        _check_final(seen["a"][-1], "a", len(p.moves))
        _check_final(seen["b"][-1], "b", len(p.moves))
        assert seen[""] == [{"error": "Expecting value at column 28 - could not parse input line "
                                      'as json request: {"id": "broken", "moves": ['}]
        assert seen["t1"] == [{"id": "t1", "action": "terminate", "terminateId": "ponder"}]
        visits = [m["rootInfo"]["visits"] for m in seen["ponder"] if "rootInfo" in m]
        assert visits == sorted(visits) and visits[-1] < 1500  # stopped early by terminate
    finally:
        ws.close()


def test_bad_input_errors_reach_only_the_caller(daemon: Daemon) -> None:
    p = _positions(1)[0]
    # A bystander's long query, running on the other connection the whole time.
    bystander = websocket.create_connection(f"{daemon.ws_url}?token={daemon.token}", timeout=60)
    bystander.send(json.dumps(p.query(id="bystander", maxVisits=60)))

    # Wrong or missing token: refused at the handshake, with a clear reason.
    for url in (daemon.ws_url, f"{daemon.ws_url}?token=wrong"):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(url, timeout=10)
        assert info.value.status_code == 401 and b"token" in (info.value.resp_body or b"")
    with pytest.raises(urllib.error.HTTPError) as http_info:
        urllib.request.urlopen(daemon.ws_url.replace("ws://", "http://") + "metrics", timeout=10)
    assert http_info.value.code == 401

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(daemon.socket))
        big = json.dumps(p.query(id="big", maxVisits=8, padding="x" * 70_000))
        lines = [
            big,
            json.dumps(p.query(id="nomodel", maxVisits=8, model="nope")),
            json.dumps(p.query(id="greedy", maxVisits=5000)),
            json.dumps(p.query(id="greedy2", overrideSettings={"maxVisits": 99999})),
            json.dumps(p.query(id="greedy3", overrideSettings={"maxVisits0": "99999"})),
            json.dumps(p.query(id="fine", maxVisits=8)),
        ]
        s.sendall(("\n".join(lines) + "\n").encode())
        got: dict[str, dict[str, Any]] = {}
        buf = b""
        while len(got) < 6:
            chunk = s.recv(1 << 16)
            assert chunk, got
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for line in complete:
                msg = json.loads(line)
                got[msg["id"]] = msg
    assert "65536 bytes" in got["big"]["error"]
    assert got["nomodel"] == {"error": "unknown model 'nope': this server has main, tf",
                              "field": "model", "id": "nomodel"}
    assert got["greedy"]["field"] == "maxVisits" and "limit of 2000" in got["greedy"]["error"]
    assert "overrideSettings.maxVisits 99999" in got["greedy2"]["error"]
    assert "overrideSettings.maxVisits0 99999" in got["greedy3"]["error"]
    _check_final(got["fine"], "fine", len(p.moves))  # the same connection goes on working

    # Per-connection concurrency: the 65th query in flight is refused, the others answered.
    # (Long searches, so that none finishes while the 70 arrive; then all are terminated.)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(daemon.socket))
        s.sendall("".join(json.dumps(p.query(id=f"c{i}", maxVisits=1500)) + "\n"
                          for i in range(70)).encode())
        replies: dict[str, list[dict[str, Any]]] = defaultdict(list)
        buf = b""
        terminated = False
        while sum(1 for v in replies.values() if v[-1].get("isDuringSearch") is False
                  or "error" in v[-1]) < 70:
            chunk = s.recv(1 << 16)
            assert chunk, replies
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for line in complete:
                msg = json.loads(line)
                replies[msg["id"]].append(msg)
            if not terminated and sum(1 for v in replies.values() if "error" in v[-1]) == 6:
                s.sendall(b'{"id":"stop","action":"terminate_all"}\n')
                terminated = True
    refused = sorted(k for k, v in replies.items() if "error" in v[-1])
    assert refused == [f"c{i}" for i in range(64, 70)]
    assert all("too many queries in flight" in replies[k][-1]["error"] for k in refused)
    assert all(len([m for m in replies[f"c{i}"] if m.get("isDuringSearch") is False]) == 1
               for i in range(64))

    final = None
    while final is None:
        msg = json.loads(bystander.recv())
        if msg.get("isDuringSearch") is False:
            final = msg
    bystander.close()
    _check_final(final, "bystander", len(p.moves))
    assert final["rootInfo"]["visits"] >= 60


def test_health_and_metrics(daemon: Daemon) -> None:
    http = daemon.ws_url.replace("ws://", "http://")
    with urllib.request.urlopen(http + "healthz", timeout=10) as r:  # no token: for probes
        assert r.status == 200 and json.loads(r.read()) == {"live": True, "ready": True}
    req = urllib.request.Request(http + "metrics", headers={"Authorization": f"Bearer {daemon.token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    assert 'katapool_members_up{model="main"} 2.0' in text
    assert 'katapool_members_up{model="tf"} 1.0' in text
    assert 'katapool_responses_total{model="main",outcome="answered"}' in text
    assert 'katapool_responses_total{model="-",outcome="rejected"}' in text
    assert 'katapool_response_seconds_bucket{le="1.0",model="main"}' in text
    assert "katapool_queue_depth" in text and "katapool_member_restarts_total" in text


def test_disconnect_terminates_queries(daemon: Daemon) -> None:
    p = _positions(1)[0]
    ws = websocket.create_connection(f"{daemon.ws_url}?token={daemon.token}", timeout=30)
    for i in range(3):  # ~2000 visits each: a minute or more of search if left alone
        ws.send(json.dumps(p.query(id=f"long-{i}", maxVisits=2000)))
    deadline = time.monotonic() + 20
    while sum(m["in_flight"] for m in daemon.members("main")) < 2:
        assert time.monotonic() < deadline, "the long queries never reached the members"
        time.sleep(0.1)
    before = sum(m["visits"] for m in daemon.members("main"))
    ws.close()
    deadline = time.monotonic() + 180  # a hang guard: stopping takes about a second
    while any(m["in_flight"] for m in daemon.members("main")) or \
            next(m for m in daemon.status()["models"] if m["name"] == "main")["queue"]:
        assert time.monotonic() < deadline, daemon.members("main")
        time.sleep(0.1)
    # Terminated, not finished: all three searches together stopped far short of one's 2000.
    assert sum(m["visits"] for m in daemon.members("main")) - before < 2000


def test_analyze_connects_to_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    """`katapool analyze --connect`: the daemon's members do the work (no embedded pool)."""
    record = load_sgf(SHORT_SGF)
    positions = len(record.moves) + 1
    before = {name: sum(m["visits"] for m in daemon.members(name)) for name in ("main", "tf")}
    proc = daemon.kp.run("analyze", str(SHORT_SGF), "--visits", "1", "--checks", "0", "--connect",
                         f"unix:{daemon.socket}", "--model", "main", "--json", "-o", str(tmp_path),
                         timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [game] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [m["vertex"] for m in game["moves"]] == [m for _, m in record.moves]
    assert Path(game["sgf"]).is_file()
    after = {name: sum(m["visits"] for m in daemon.members(name)) for name in ("main", "tf")}
    assert after["main"] - before["main"] >= positions  # one visit or more per position
    assert after["tf"] == before["tf"]  # --model main: the other network was not asked
    # A model the daemon does not serve: the daemon's own error, one line.
    bad = daemon.kp.run("analyze", str(SHORT_SGF), "--visits", "1", "--connect",
                        f"unix:{daemon.socket}", "--model", "nope", "-o", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "unknown model 'nope'" in bad.stderr, bad.stderr[-2000:]


def test_reload_during_a_batch_loses_nothing(daemon: Daemon) -> None:
    """Queries in flight, and more arriving, all through a `katapool reload` that applies a
    changed pool file: "main" (a new preset) restarts member by member, "tf" (resized 1 -> 2)
    moves to a new pool. Every query is answered exactly once."""
    positions = _positions(50)
    before = {m["name"]: m["reloads"] for m in daemon.members("main")}
    # A broken file first: refused with its line; nothing changes.
    daemon.config.write_text("models:\n  main:\n    members: [\n")
    bad = daemon.cli("reload")
    assert bad.returncode != 0 and "katapool.yaml:4" in bad.stderr, bad.stderr
    daemon.write_config(tf_members=2, main_preset="desktop")  # unchanged models keep running

    async def batch() -> tuple[dict[str, list[Any]], list[BaseException], int]:
        answers: dict[str, list[Any]] = defaultdict(list)
        errors: list[BaseException] = []
        tasks: list[asyncio.Task[None]] = []
        # Two connections (the file allows 64 in flight per connection).
        clients = [await AsyncClient.connect(f"unix:{daemon.socket}") for _ in range(2)]
        try:
            async def one(i: int) -> None:
                model = "tf" if i % 5 == 0 else None
                try:
                    async for msg in clients[i % 2].request(positions[i % 50].query(
                            id=f"q{i}", maxVisits=6 + i % 5, **({"model": model} if model else {}))):
                        answers[msg["id"]].append(msg)
                except BaseException as exc:
                    errors.append(exc)

            def send() -> None:
                tasks.append(asyncio.create_task(one(len(tasks))))

            def answered() -> int:
                return sum(1 for v in answers.values() if v)

            for _ in range(24):
                send()
            while answered() < 8:
                await asyncio.sleep(0.05)
            # New queries keep coming while members restart and "tf" moves, so some are in
            # flight at every step of the reload, however fast this machine is.
            reload = asyncio.create_task(asyncio.to_thread(daemon.cli, "reload", timeout=600))
            while not reload.done():
                send()
                await asyncio.sleep(0.6)
            assert (await reload).returncode == 0, reload.result().stderr
            assert "main: restarted member by member" in reload.result().stdout
            assert "tf: replaced by a new pool" in reload.result().stdout
            assert answered() < len(tasks), "every query ended before the reload did"
            await asyncio.gather(*tasks)
        finally:
            for client in clients:
                await client.close()
        return answers, errors, len(tasks)

    answers, errors, sent = asyncio.run(batch())
    assert not errors, errors[:3]
    assert sorted(answers) == sorted(f"q{i}" for i in range(sent))
    for i in range(sent):
        finals = [m for m in answers[f"q{i}"] if m.get("isDuringSearch") is False]
        assert len(finals) == 1, answers[f"q{i}"]
        _check_final(finals[0], f"q{i}", len(positions[i % 50].moves))
    after = {m["name"]: m["reloads"] for m in daemon.members("main")}
    assert all(after[n] == before[n] + 1 for n in before)
    assert [m["state"] for m in daemon.members("tf")] == ["ready", "ready"]


def test_sighup_reloads_the_pool_file(daemon: Daemon) -> None:
    """SIGHUP does what `katapool reload` does: a broken file is refused (in the log, as a
    signal has no caller) and changes nothing; a good one is applied ("tf" resized 2 -> 1)."""
    log = daemon.state.parent / "daemon.out"
    assert int((daemon.state / "katapool.pid").read_text().split()[0]) == daemon.proc.pid
    reloads = {m["name"]: m["reloads"] for m in daemon.members("main")}
    tf_pids = [m["pid"] for m in daemon.members("tf")]
    assert len(tf_pids) == 2  # as the reload test above left it

    daemon.config.write_text("models:\n  main:\n    members: [\n")
    os.kill(daemon.proc.pid, signal.SIGHUP)
    _wait(lambda: "reload failed, still serving the previous configuration" in log.read_text(),
          "the refused reload in the log")
    assert [m["pid"] for m in daemon.members("tf")] == tf_pids
    assert {m["name"]: m["reloads"] for m in daemon.members("main")} == reloads

    daemon.write_config(tf_members=1)
    os.kill(daemon.proc.pid, signal.SIGHUP)
    _wait(lambda: [m["state"] for m in daemon.members("tf")] == ["ready"]
          and all(m["state"] == "ready" and m["reloads"] == reloads[m["name"]] + 1
                  for m in daemon.members("main")), "the reload to be applied")
    assert "'tf': 'replaced by a new pool'" in log.read_text()
    with Client.connect(f"unix:{daemon.socket}") as client:  # the new "tf" pool answers
        r = client.analyze(_positions(1)[0], visits=4, model="tf", timeout=120)
        assert r.visits >= 4 and not r.is_during_search


def _wait(predicate: Any, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout  # a hang guard: a reload takes seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_stop_drains_and_leaves_no_process(daemon: Daemon) -> None:
    """`katapool stop` lets a query in flight finish (its client gets the answer), then
    stops every engine; a client still connected learns at once that the daemon is gone
    (a WebSocket by "going away", not by the "internal error" of a cut-off connection)."""
    status = daemon.status()
    pids = [m["pid"] for model in status["models"] for m in model["members"]]
    assert len(pids) == 3 and all(pids)  # main's two; tf's one since the SIGHUP test
    p = _positions(1)[0]
    ws = websocket.create_connection(f"{daemon.ws_url}?token={daemon.token}", timeout=60)
    ws.send(json.dumps(p.query(id="last", maxVisits=150)))
    idle = websocket.create_connection(f"{daemon.ws_url}?token={daemon.token}", timeout=60)
    goodbye: list[bytes] = []

    def read_goodbye() -> None:  # the close frame, answered at once as KaTrain's library does
        opcode = None
        while opcode != websocket.ABNF.OPCODE_CLOSE:  # pings come first if stopping is slow
            opcode, frame = idle.recv_data_frame(control_frame=True)
        goodbye.append(frame.data)
        idle.shutdown()

    reader = threading.Thread(target=read_goodbye, daemon=True)
    reader.start()
    client = Client.connect(f"unix:{daemon.socket}")
    ws_client = Client.connect(daemon.ws_url, token=daemon.token)
    stop = daemon.cli("stop")
    assert stop.returncode == 0, stop.stderr
    final = json.loads(ws.recv())
    _check_final(final, "last", len(p.moves))
    assert final["rootInfo"]["visits"] >= 150  # finished, not cut short
    assert daemon.proc.wait(30) == 0
    reader.join(60)
    assert goodbye and int.from_bytes(goodbye[0][:2], "big") == 1001, goodbye
    assert b"katapool is stopping" in goodbye[0]
    with pytest.raises(ConnectionLost):  # not AnalysisTimeout: the client knows, it does not wait
        client.analyze(p, visits=1, timeout=60)
    client.close()
    with pytest.raises(ConnectionLost, match="katapool is stopping"):
        ws_client.query_version()
    ws_client.close()
    time.sleep(0.5)
    alive = [p for p in pids if psutil.pid_exists(p)
             and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive
    assert not daemon.socket.exists() and not (daemon.state / "katapool.pid").exists()
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(daemon.state) in " ".join(p.info.get("cmdline") or [])
                 and p.pid != os.getpid()]
    assert not leftovers
