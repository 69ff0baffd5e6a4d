"""Bounded memory: every buffer that grows with a slow or stopped peer has a limit, and past it
that peer (and only that peer) gets an error or is cut off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pool_helpers import Collector, make_pool, member_pids, wait_for

from conftest import G170, Katapool
from katapool.engine.analysis import ORPHANS_KEPT, AnalysisEngine
from katapool.engine.process import EngineProcess
from katapool.gtp.bridge import BridgeOptions, GtpBridge
from katapool.pool import PoolPolicy

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
            causes = pool.supervisor.slots[0].restart_causes
            return c, dict(causes), dict(pool.router.stats)

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
