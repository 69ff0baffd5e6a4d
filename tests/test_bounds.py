"""Bounded memory: every buffer that grows with a slow or stopped peer has a limit, and past it
that peer (and only that peer) gets an error or is cut off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from daemon_helpers import Daemon, start_daemon, stop_daemon
from pool_helpers import Collector, make_pool, member_pids, wait_for

from conftest import G170, Katapool
from katapool.cli.stdio import STDOUT_MAX_UNREAD, _PipeWriter, _StdoutWriter
from katapool.engine.analysis import ORPHANS_KEPT, AnalysisEngine
from katapool.engine.probe import probe_version
from katapool.engine.process import EngineProcess, prune_logs
from katapool.gtp.bridge import BridgeOptions, GtpBridge
from katapool.pool import PoolPolicy
from katapool.pool.launch import LaunchSpec, build_factories

FAKES = Path(__file__).parent / "fakes"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_gtp_restarts_release_every_file(tmp_path: Path) -> None:
    """A hundred engine restarts through the bridge's own recovery path leave no file open:
    each replaced engine's log handler and pipes are released. The engine is the fake one
    (tests/fakes/fake_gtp_katago): a real KataGo takes seconds to start here, so a hundred
    restarts would take minutes. Every engine object is kept: release must not wait for the
    garbage collector to happen upon an unreachable one."""
    log = tmp_path / "gtp.stderr.log"
    engines: list[EngineProcess] = []

    async def go() -> tuple[int, int, list[bytes]]:
        async def spawn(first: bool) -> EngineProcess:
            engine = EngineProcess([str(FAKES / "fake_gtp_katago")], name="fake katago gtp",
                                   ready_marker="GTP ready", start_timeout=60, stderr_log=log)
            await engine.start()
            engines.append(engine)
            return engine

        out: list[bytes] = []
        bridge = GtpBridge(spawn, out.append, lambda line: None,
                           BridgeOptions(crash_budget=1000, crash_window=1.0))

        async def restart(count: int) -> None:
            for _ in range(count):
                before = bridge.restarts
                assert bridge.engine is not None
                bridge.engine.signal(signal.SIGKILL)
                await wait_for(lambda b=before: bridge.restarts > b and bridge.engine_ok,  # type: ignore[misc]
                               60, "the bridge to restart its engine")

        await bridge.start()
        try:
            await restart(3)  # warm: anything opened once (loggers, the event loop's own)
            await asyncio.sleep(0.2)
            before = _open_fds()
            await restart(100)
            await asyncio.sleep(0.5)  # the last killed engine's stderr reaches its end
            after = _open_fds()
            bridge.on_gui_line("7 name")
            await wait_for(lambda: b"=7 \n\n" in out, 60, "an answer from the 104th engine")
        finally:
            await bridge.close()
        return before, after, out

    before, after, out = asyncio.run(go())
    assert after - before <= 2, f"{after - before} files left open by 100 engine restarts"
    assert b"=7 \n\n" in out
    assert "GTP ready" in log.read_text()
    assert len(engines) == 104


@pytest.fixture
def pool_env(kp: Katapool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KATAPOOL_DATA_DIR", str(kp.data_dir))
    monkeypatch.delenv("KATAPOOL_KATAGO", raising=False)
    yield kp.data_dir


def _long_game() -> list[list[str]]:
    """152 legal moves: every other row filled, colours alternating (no captures)."""
    cols = "ABCDEFGHJKLMNOPQRST"
    points = [f"{c}{row}" for row in range(1, 17, 2) for c in cols]
    return [["B" if i % 2 == 0 else "W", p] for i, p in enumerate(points)]


@pytest.mark.engine
def test_member_that_reads_nothing_is_replaced_and_loses_no_query(pool_env: Path,
                                                                  tmp_path: Path) -> None:
    """A member stopped (SIGSTOP) while queries pour in: its unread input passes the backlog
    bound, so it is restarted and its queries go to the other member; every query is answered
    once. Health checks are set far off, so only the bound can notice."""
    moves = _long_game()
    count = 300

    async def go() -> tuple[Collector, dict[str, int], dict[str, int]]:
        c = Collector()
        policy = PoolPolicy(responsive_interval=3600, functional_interval=3600)
        async with make_pool(tmp_path, members=2, policy=policy) as pool:
            for slot in pool.supervisor.slots:
                slot.input_backlog_max = 64 << 10
            stopped = member_pids(pool)[0]
            os.kill(stopped, signal.SIGSTOP)
            try:
                session = pool.session(c)
                for i in range(count):
                    session.submit(json.dumps({"id": f"q{i}", "moves": moves, "rules": "chinese",
                                               "komi": 7.5, "boardXSize": 19, "boardYSize": 19,
                                               "maxVisits": 1}))
                await asyncio.wait_for(pool.drain(), 300)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stopped, signal.SIGCONT)
            return c, dict(pool.members()[0].restart_causes), dict(pool.counters().events)

    c, causes, stats = asyncio.run(go())
    assert causes == {"backlog": 1}
    assert stats["rerouted"] >= 1
    for i in range(count):
        assert len(c.finals(f"q{i}")) == 1, c.by_id[f"q{i}"]


@pytest.mark.engine
def test_analysis_engine_keeps_only_the_latest_orphans(kp: Katapool, katago: Path,
                                                      tmp_path: Path) -> None:
    """Answers nobody waits for (here: the real engine answering ids sent behind the object's
    back) are counted, and only the latest few kept."""
    cfg = tmp_path / "a.cfg"
    kp.run("config", "generate", "--mode", "analysis", "--model", str(G170),
           "--set", f"logDir={tmp_path / 'logs'}", "-o", str(cfg), check=True)
    sent = ORPHANS_KEPT * 3

    async def go() -> tuple[int, list[str]]:
        async with AnalysisEngine(katago, cfg, G170) as engine:
            for i in range(sent):
                await engine.process.send_line(json.dumps({"id": f"stray{i}",
                                                           "action": "query_version"}))
            await wait_for(lambda: engine.orphan_count >= sent, 120, "the stray answers")
            # The object still works for its own queries.
            [answer] = await engine.request({"id": "mine", "moves": [], "rules": "chinese",
                                             "komi": 7.5, "boardXSize": 9, "boardYSize": 9,
                                             "maxVisits": 1})
            assert answer["id"] == "mine"
            return engine.orphan_count, [str(o.get("id")) for o in engine.orphans]

    count, kept = asyncio.run(go())
    assert count == sent
    assert kept == [f"stray{i}" for i in range(sent - ORPHANS_KEPT, sent)]


def test_stdout_pipe_writer_stops_at_its_bound() -> None:
    """`katapool analysis`/`gtp` stdout on a pipe nobody reads: past the bound the writer stops
    holding answers and says so, once."""
    read_end, write_end = os.pipe()

    async def go() -> tuple[list[str], int, bool]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol,
                                                     os.fdopen(write_end, "wb", buffering=0))
        calls: list[str] = []
        writer = _PipeWriter(transport, lambda: calls.append("stalled"), limit=1 << 20)
        line = {"id": "x" * 1000}
        for _ in range(5000):  # 5 MB, five times the bound
            writer.write(line)
        held = transport.get_write_buffer_size()
        await writer.close()  # returns at once: the reader is gone
        return calls, held, transport.is_closing()

    try:
        calls, held, closed = asyncio.run(go())
    finally:
        os.close(read_end)
    assert calls == ["stalled"]
    assert held <= 1 << 20
    assert closed


def test_stdout_thread_writer_stops_at_its_bound() -> None:
    """The same for the writer thread (stdout that asyncio cannot watch, e.g. a file)."""
    read_end, write_end = os.pipe()

    async def go() -> tuple[list[str], bool]:
        calls: list[str] = []
        writer = _StdoutWriter(lambda: calls.append("stalled"), limit=1 << 20, fd=write_end)
        for _ in range(5000):
            writer.write({"id": "x" * 1000})
        stalled = writer.stalled
        await writer.close()
        return calls, stalled

    try:
        calls, stalled = asyncio.run(go())
    finally:
        os.close(read_end)
        os.close(write_end)
    assert calls == ["stalled"]
    assert stalled


@pytest.mark.engine
def test_analysis_command_stops_when_its_reader_stops_reading(kp: Katapool) -> None:
    """The real `katapool analysis` with a reader that never reads: it holds at most
    STDOUT_MAX_UNREAD of answers, says why on stderr and exits 1 (on the old code it grew
    without end). query_version is answered by katapool itself, so the answers pile up fast."""
    big_id = "v" * 60_000
    lines = STDOUT_MAX_UNREAD // len(big_id) + 200
    proc = subprocess.Popen([sys.executable, "-m", "katapool", "analysis", "-model", str(G170),
                             "--members", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=kp.env)
    assert proc.stdin is not None and proc.stderr is not None

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            for i in range(lines):
                proc.stdin.write(json.dumps({"id": f"{big_id}{i}",  # type: ignore[union-attr]
                                             "action": "query_version"}).encode() + b"\n")
            proc.stdin.close()  # type: ignore[union-attr]

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        code = proc.wait(timeout=300)
        err = proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert code == 1, err
    assert "stopped reading" in err


BOUNDED_POOL = """\
models:
  main:
    path: {g170}
    members: 1
listen:
  websocket: 127.0.0.1:0
limits:
  max_connections: 3
  max_unread_bytes: 1048576
"""


@pytest.fixture(scope="module")
def bounded_daemon(kp: Katapool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    handle = start_daemon(kp, tmp_path_factory.mktemp("bounded"), BOUNDED_POOL.format(g170=G170))
    yield handle
    stop_daemon(handle)


def _unix(daemon: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(str(daemon.socket))
    return s


def _ask(s: socket.socket, query: dict[str, Any]) -> dict[str, Any]:
    s.sendall(json.dumps(query).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return dict(json.loads(data.splitlines()[0]))


def _connections(daemon: Daemon) -> int:
    return int(daemon.status()["connections"]) - 1  # less the status request's own


@pytest.mark.engine
def test_connections_over_the_limit_get_an_error_and_others_keep_working(
        bounded_daemon: Daemon) -> None:
    """limits.max_connections 3: a fourth client (Unix socket or WebSocket) is told why and
    closed; the three keep working, and `katapool status` (a control request) still passes."""
    d = bounded_daemon
    held = [_unix(d) for _ in range(3)]
    try:
        for i, s in enumerate(held):
            assert _ask(s, {"id": f"v{i}", "action": "query_version"})["id"] == f"v{i}"
        extra = _unix(d)
        answer = _ask(extra, {"id": "late", "action": "query_version"})
        assert answer["id"] == "late" and "too many connections" in answer["error"]
        assert "limits.max_connections" in answer["error"]
        assert extra.recv(1) == b""  # and closed
        extra.close()
        ws = websocket.create_connection(d.http.replace("http://", "ws://"), timeout=30)
        refused = json.loads(ws.recv())
        assert "too many connections" in refused["error"]
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2]) == 1013
        ws.close()
        assert d.kp.run("status", "--state-dir", str(d.state), check=True).returncode == 0
        for i, s in enumerate(held):  # the three were not disturbed
            assert _ask(s, {"id": f"w{i}", "action": "query_version"})["id"] == f"w{i}"
    finally:
        for s in held:
            s.close()
    wait_until(lambda: _connections(d) == 0, 30, "the held connections to close")
    s = _unix(d)
    assert "error" not in _ask(s, {"id": "again", "action": "query_version"})
    s.close()


@pytest.mark.engine
def test_client_that_reads_nothing_is_disconnected_alone(bounded_daemon: Daemon) -> None:
    """A client sends queries and never reads: past limits.max_unread_bytes (1 MB here) of
    held answers it is disconnected (on a Unix socket or a WebSocket), with a warning and
    no traceback in the daemon's log; a client beside it is answered as usual."""
    d = bounded_daemon
    wait_until(lambda: _connections(d) == 0, 30, "earlier connections to close")
    bystander = _unix(d)
    big_id = "u" * 60_000
    queries = [json.dumps({"id": f"{big_id}{i}", "action": "query_version"})
               for i in range(200)]  # 12 MB of answers asked for
    silent = _unix(d)
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with contextlib.suppress(OSError):  # the daemon cuts it off mid-way
        for query in queries:
            silent.sendall(query.encode() + b"\n")
    wait_until(lambda: _connections(d) == 1, 60, "the silent client to be disconnected")
    silent_ws = websocket.create_connection(d.http.replace("http://", "ws://"), timeout=60,
                                            sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    with contextlib.suppress(OSError, websocket.WebSocketException):
        for query in queries:
            silent_ws.send(query)
    wait_until(lambda: _connections(d) == 1, 60, "the silent WebSocket to be disconnected")
    answer = _ask(bystander, {"id": "b", "moves": [], "rules": "chinese", "komi": 7.5,
                              "boardXSize": 9, "boardYSize": 9, "maxVisits": 2})
    assert answer["id"] == "b" and answer["isDuringSearch"] is False
    bystander.close()
    silent.close()
    silent_ws.shutdown()
    log = (d.state / "logs" / "daemon.log").read_text()
    assert "answers unread" in log and "does not read its answers" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.1)


DEAD_PID = 4_194_304 + 1000  # above Linux's largest pid_max: never a running process


def _touch(path: Path, age: float) -> None:
    path.write_text("x\n")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def test_engine_logs_are_pruned_to_the_newest_per_kind(tmp_path: Path) -> None:
    """Per-process engine logs: the newest N processes' katapool stderr logs (rotations with
    them) and the newest N KataGo logs are kept; a running process keeps its own; nothing
    else in the directory is touched."""
    for i in range(30):  # 30 finished processes, two members each, one rotation
        for name in (f"{DEAD_PID + i}-member-0.stderr.log", f"{DEAD_PID + i}-member-1.stderr.log",
                     f"{DEAD_PID + i}-member-0.stderr.log.1"):
            _touch(tmp_path / name, age=1000 - i)
        _touch(tmp_path / f"20261206-1019{i:02d}-ABCDEF{i:02d}.log", age=1000 - i)
    _touch(tmp_path / f"{os.getpid()}-member-0.stderr.log", age=5000)  # running: kept
    others = ["daemon.log", "main-member-0.stderr.log", "notes.txt", "20261206.log"]
    for name in others:
        _touch(tmp_path / name, age=9000)

    deleted = prune_logs(tmp_path, keep=5)

    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(deleted) == 26 * 3 + 25
    kept_pids = {int(n.split("-")[0]) for n in left if n.endswith((".stderr.log", ".log.1"))
                 and n.split("-")[0].isdigit()}
    assert kept_pids == {os.getpid(), *(DEAD_PID + i for i in range(26, 30))}
    assert [n for n in left if n.startswith("20261206-")] == \
        [f"20261206-1019{i:02d}-ABCDEF{i:02d}.log" for i in range(25, 30)]
    assert all(name in left for name in others)


@pytest.mark.engine
def test_every_pool_start_prunes_old_engine_logs(kp: Katapool, katago: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a pool (what `katapool analysis`, the client and the daemon do at start) prunes
    its member logs and KataGo's own analysis logs to KATAPOOL_KEEP_LOGS."""
    data = tmp_path / "data"
    monkeypatch.setenv("KATAPOOL_DATA_DIR", str(data))
    monkeypatch.setenv("KATAPOOL_KEEP_LOGS", "3")
    pool_logs, katago_logs = tmp_path / "pool-logs", data / "logs" / "analysis"
    pool_logs.mkdir()
    katago_logs.mkdir(parents=True)
    for i in range(10):
        _touch(pool_logs / f"{DEAD_PID + i}-member-0.stderr.log", age=100 - i)
        _touch(katago_logs / f"20261206-1019{i:02d}-ABCDEF{i:02d}.log", age=100 - i)
    cfg = tmp_path / "own.cfg"  # a caller's own config: no device discovery needed
    cfg.write_text("openclTunerFile = none\n")
    spec = LaunchSpec(info=probe_version(katago), model=G170, configs=[cfg])
    build_factories(spec, tmp_path / "run", log_dir=pool_logs)
    assert len(list(pool_logs.iterdir())) == 3
    assert len(list(katago_logs.iterdir())) == 3
