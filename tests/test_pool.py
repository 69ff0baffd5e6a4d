"""The pool on the real engine: routing, actions, backpressure, failover, hangs, bad members."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pool_helpers import Collector, make_pool, member_pids, wait_for

from conftest import Katapool
from katapool.errors import EngineStartError
from katapool.pool import PoolPolicy
from katapool.pool.supervisor import SlotState

pytestmark = pytest.mark.engine

OPENING = [["B", "Q16"], ["W", "D4"], ["B", "Q4"], ["W", "D16"], ["B", "C3"]]


def query(qid: str, turns: list[int] | None = None, visits: int = 4, **extra: object) -> str:
    q: dict[str, object] = {"id": qid, "moves": OPENING, "rules": "chinese", "komi": 7.5,
                            "boardXSize": 19, "boardYSize": 19, "maxVisits": visits, **extra}
    if turns is not None:
        q["analyzeTurns"] = turns
    return json.dumps(q)


@pytest.fixture
def pool_env(kp: Katapool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KATAPOOL_DATA_DIR", str(kp.data_dir))
    monkeypatch.delenv("KATAPOOL_KATAGO", raising=False)
    yield kp.data_dir


def test_two_callers_same_ids_each_get_their_own(pool_env: Path, tmp_path: Path) -> None:
    async def go() -> tuple[Collector, Collector]:
        a, b = Collector(), Collector()
        async with make_pool(tmp_path) as pool:
            sa, sb = pool.session(a), pool.session(b)
            for i in range(6):
                sa.submit(query(f"q{i}", [0, 2, 5]))
                sb.submit(query(f"q{i}", [1]))
            await pool.drain()
            assert pool.router.outstanding == 0
        return a, b

    a, b = asyncio.run(go())
    for i in range(6):
        assert sorted(m["turnNumber"] for m in a.finals(f"q{i}")) == [0, 2, 5]
        assert [m["turnNumber"] for m in b.finals(f"q{i}")] == [1]


def test_actions_and_bad_lines_keep_the_pool_serving(pool_env: Path, tmp_path: Path) -> None:
    async def go() -> Collector:
        c = Collector()
        async with make_pool(tmp_path) as pool:
            s = pool.session(c)
            for line in ["{not json", "[]", '{"moves":[]}', '{"id":"x","action":"fly"}',
                         '{"id":"v","action":"query_version"}',
                         '{"id":"m","action":"query_models"}',
                         '{"id":"c","action":"clear_cache"}',
                         query("bad-move", moves=[["B", "Q16"], ["W", "Q16"]]),
                         query("odd-field", [5], someFutureField=1),
                         query("ok", [5])]:
                s.submit(line)
            await pool.drain()
            await wait_for(lambda: "c" in c.by_id, 10, "clear_cache acknowledgement")
        return c

    c = asyncio.run(go())
    errors = [m for m in c.messages if "error" in m and "id" not in m]
    assert len(errors) == 3  # not json, not an object, no id
    assert c.by_id["x"][0]["field"] == "action"
    assert c.by_id["v"][0]["version"] == "1.18.1"
    assert c.by_id["m"][0]["models"][0]["name"].endswith("g170-b6c96-s175395328-d26788732.bin.gz")
    assert c.by_id["c"] == [{"id": "c", "action": "clear_cache"}]  # acknowledged once
    assert c.errors("bad-move") and "Illegal" in c.errors("bad-move")[0]["error"]
    assert [m["turnNumber"] for m in c.finals("ok")] == [5]
    # Unknown fields reach the engine, which warns (once, under the caller's id) and answers.
    warnings = [m for m in c.by_id["odd-field"] if "warning" in m]
    assert len(warnings) == 1 and warnings[0]["field"] == "someFutureField"
    assert [m["turnNumber"] for m in c.finals("odd-field")] == [5]


def test_terminate_ends_every_turn_once(pool_env: Path, tmp_path: Path) -> None:
    async def go() -> Collector:
        c = Collector()
        async with make_pool(tmp_path, members=1) as pool:
            s = pool.session(c)
            s.submit(query("long", [0, 1, 2, 3, 4, 5], visits=100000, reportDuringSearchEvery=0.2))
            s.submit(query("other", [5], visits=2))
            await wait_for(lambda: any(m.get("isDuringSearch") for m in c.by_id["long"]), 30,
                           "partial results")
            s.submit('{"id":"t","action":"terminate","terminateId":"long","turnNumbers":[0,1,2,3,4,5]}')
            await asyncio.wait_for(pool.drain(), 60)
        return c

    c = asyncio.run(go())
    assert c.by_id["t"] == [{"id": "t", "action": "terminate", "terminateId": "long",
                             "turnNumbers": [0, 1, 2, 3, 4, 5]}]
    finals = c.finals("long")
    assert sorted(m["turnNumber"] for m in finals) == [0, 1, 2, 3, 4, 5]
    assert [m["turnNumber"] for m in c.finals("other")] == [5]


def test_full_pool_refuses_with_a_katago_style_error(pool_env: Path, tmp_path: Path) -> None:
    async def go() -> Collector:
        c = Collector()
        async with make_pool(tmp_path, members=1, policy=PoolPolicy(max_outstanding=2)) as pool:
            s = pool.session(c)
            for i in range(4):
                s.submit(query(f"q{i}", visits=2))
            await pool.drain()
        return c

    c = asyncio.run(go())
    assert len(c.finals("q0")) == len(c.finals("q1")) == 1
    for qid in ("q2", "q3"):
        [err] = c.by_id[qid]
        assert "katapool is full" in err["error"] and err["id"] == qid


def test_sigkill_mid_flight_loses_nothing(pool_env: Path, tmp_path: Path) -> None:
    async def go() -> tuple[Collector, list[dict[str, object]]]:
        c = Collector()
        policy = PoolPolicy(backoff_initial=0.1)
        async with make_pool(tmp_path, policy=policy) as pool:
            await pool.supervisor.wait_until_all_settled()
            s = pool.session(c)
            for i in range(10):
                s.submit(query(f"q{i}", [0, 1, 2, 3, 4, 5], visits=16))
            await wait_for(lambda: len(c.messages) >= 5, 60, "first results")
            victim = member_pids(pool)[0]
            os.kill(victim, signal.SIGKILL)
            await asyncio.wait_for(pool.drain(), 180)
            await pool.supervisor.wait_until_all_settled()
            assert victim not in member_pids(pool)
            assert len(member_pids(pool)) == 2, "the killed member was replaced"
            status = pool.status()
        return c, status

    c, status = asyncio.run(go())
    for i in range(10):
        turns = [m["turnNumber"] for m in c.finals(f"q{i}")]
        assert sorted(turns) == [0, 1, 2, 3, 4, 5], f"q{i}: {turns}"
    assert sum(s["restarts"] for s in status) >= 1  # type: ignore[misc]


def test_sigstopped_member_is_detected_rerouted_and_replaced(pool_env: Path, tmp_path: Path) -> None:
    policy = PoolPolicy(responsive_interval=3600, functional_interval=0.5, functional_deadline=3,
                        backoff_initial=0.1)

    async def go() -> tuple[Collector, str | None]:
        c = Collector()
        async with make_pool(tmp_path, policy=policy) as pool:
            await pool.supervisor.wait_until_all_settled()
            slot = pool.supervisor.slots[0]
            victim = member_pids(pool)[0]
            os.kill(victim, signal.SIGSTOP)
            s = pool.session(c)
            for i in range(6):
                s.submit(query(f"q{i}", [3, 4, 5], visits=8))
            await asyncio.wait_for(pool.drain(), 120)
            await wait_for(lambda: slot.ready and victim not in member_pids(pool), 60,
                           "the stopped member to be replaced")
            return c, slot.last_cause

    c, cause = asyncio.run(go())
    for i in range(6):
        assert sorted(m["turnNumber"] for m in c.finals(f"q{i}")) == [3, 4, 5]
    assert cause is not None and "not functional" in cause


def test_member_that_cannot_start_is_diagnosed_not_restarted(pool_env: Path, tmp_path: Path) -> None:
    bad_cfg = tmp_path / "bad.cfg"
    bad_cfg.write_text("nnMaxBatchSize = 8\n")  # lacks keys KataGo requires

    async def go() -> None:
        pool = make_pool(tmp_path / "run", members=1, configs=[bad_cfg])
        with pytest.raises(EngineStartError, match="bad config.*numAnalysisThreads"):
            await pool.start()
        [slot] = pool.supervisor.slots
        assert slot.state is SlotState.FAILED
        assert slot.generation == 1, "a config error is not worth a restart"

    asyncio.run(go())


def test_one_broken_member_does_not_stop_the_pool(pool_env: Path, tmp_path: Path) -> None:
    async def go() -> Collector:
        c = Collector()
        pool = make_pool(tmp_path, members=2)
        broken = pool.supervisor.slots[1]
        original = broken.factory

        def make_broken(index: int, generation: int):  # type: ignore[no-untyped-def]
            member = original(index, generation)
            member.argv = [*member.argv, "-override-config", "nnMaxBatchSize=0"]
            return member

        broken.factory = make_broken
        async with pool:
            await pool.supervisor.wait_until_all_settled()
            assert broken.state is SlotState.FAILED and "nnMaxBatchSize" in (broken.last_cause or "")
            s = pool.session(c)
            for i in range(4):
                s.submit(query(f"q{i}", visits=2))
            await pool.drain()
        return c

    c = asyncio.run(go())
    assert all(len(c.finals(f"q{i}")) == 1 for i in range(4))
