"""The pool on the real engine: routing, actions, backpressure, failover, hangs, bad members."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pool_helpers import Collector, make_pool, member_pids, wait_for

from conftest import SAMPLE_SGF, SHARED, Katapool
from katapool.errors import EngineStartError
from katapool.game.record import GameRecord, load_sgf
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
            assert pool.outstanding == 0
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
                s.submit(query(f"q{i}", [0, 1, 2, 3, 4, 5], visits=8))
            await wait_for(lambda: len(c.messages) >= 5, 60, "first results")
            victim = member_pids(pool)[0]
            os.kill(victim, signal.SIGKILL)
            await asyncio.wait_for(pool.drain(), 180)
            await pool.supervisor.wait_until_all_settled()
            assert victim not in member_pids(pool)
            assert len(member_pids(pool)) == 2, "the killed member was replaced"
            assert pool.router.stats["rerouted_turns"] >= 1, "the kill hit no work in flight"
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


def test_a_start_cancelled_midway_leaves_no_engine_running(pool_env: Path, tmp_path: Path) -> None:
    """Ctrl-C (or a caller's timeout) while the members are still loading: the engines that were
    already spawned are stopped, not left running for nobody."""
    async def go() -> list[int]:
        pool = make_pool(tmp_path, members=2)
        starting = asyncio.create_task(pool.start())
        await wait_for(lambda: bool(member_pids(pool)), 60, "an engine spawned")
        assert not starting.done(), "too late to cancel the start"
        spawned = member_pids(pool)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        return spawned

    spawned = asyncio.run(go())
    assert not [pid for pid in spawned if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_one_broken_member_does_not_stop_the_pool(pool_env: Path, tmp_path: Path) -> None:
    async def go() -> Collector:
        c = Collector()
        pool = make_pool(tmp_path, members=2)
        broken = pool.supervisor.slots[1]
        original = broken.factory

        def make_broken(index: int, generation: int):  # type: ignore[no-untyped-def]
            member = original(index, generation)
            member.argv = [*member.argv, "-override-config", "nnMaxBatchSize=0"]  # type: ignore[attr-defined]
            return member

        broken.factory = make_broken
        async with pool:
            await pool.supervisor.wait_until_all_settled()
            assert broken.state is SlotState.FAILED
            # KataGo's own words, after two starts: the same refusal twice ends the retries.
            assert "Key 'nnMaxBatchSize' must be in the range" in (broken.last_cause or "")
            assert broken.generation == 2 and broken.last_cause.startswith(  # type: ignore[union-attr]
                "failed to start twice the same way")
            s = pool.session(c)
            for i in range(4):
                s.submit(query(f"q{i}", visits=2))
            await pool.drain()
        return c

    c = asyncio.run(go())
    assert all(len(c.finals(f"q{i}")) == 1 for i in range(4))


def test_query_deadline_terminates_and_terminate_grace_replaces_a_stuck_member(
        pool_env: Path, tmp_path: Path) -> None:
    """`query_deadline`: a query still running after it is terminated (its caller gets the
    partial result as its final). `terminate_grace`: a member that does not answer that
    terminate (here SIGSTOPped) is stuck and replaced; the stuck query ends with
    `noResults`. The other health checks are off, so only the deadline can notice."""
    policy = PoolPolicy(query_deadline=2, terminate_grace=2, responsive_interval=3600,
                        functional_interval=3600, backoff_initial=0.1)

    async def go() -> tuple[Collector, list[dict[str, object]], str | None, int, int]:
        c = Collector()
        async with make_pool(tmp_path, members=1, policy=policy) as pool:
            s = pool.session(c)
            [slot] = pool.supervisor.slots
            # 100,000 visits would take hours here; the bounds below are hang guards.
            s.submit(query("overdue", visits=100_000))
            await asyncio.wait_for(pool.drain(), 120)
            first_pid = member_pids(pool)[0]
            assert slot.restarts == 0, "a deadline stops the query, not the member"

            s.submit(query("stuck", visits=100_000))
            await wait_for(lambda: pool.members()[0].in_flight > 0, 30, "the query on the member")
            os.kill(first_pid, signal.SIGSTOP)
            await asyncio.wait_for(pool.drain(), 120)
            await wait_for(lambda: slot.ready and first_pid not in member_pids(pool), 120,
                           "the stuck member to be replaced")
            s.submit(query("after", visits=2))
            await asyncio.wait_for(pool.drain(), 120)
            return c, pool.status(), slot.last_cause, slot.restarts, first_pid

    c, status, cause, restarts, first_pid = asyncio.run(go())
    [overdue] = c.by_id["overdue"]  # no error, no partials (none asked for): one final
    assert overdue["isDuringSearch"] is False and overdue["turnNumber"] == len(OPENING)
    assert overdue.get("noResults") or overdue["rootInfo"]["visits"] < 100_000
    assert c.by_id["stuck"] == [{"id": "stuck", "isDuringSearch": False, "noResults": True,
                                 "turnNumber": len(OPENING)}]
    assert cause is not None and cause.startswith("stuck: query stuck still unanswered"), cause
    assert restarts == 1
    assert [m["turnNumber"] for m in c.finals("after")] == [len(OPENING)]
    assert not psutil.pid_exists(first_pid) or \
        psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE


def test_one_games_positions_stay_on_one_member(pool_env: Path, tmp_path: Path) -> None:
    """Affinity: positions of one game (the same opening) go to the member that analysed
    the game before, whose NN cache holds them, even when another member is as idle (an
    idle pool's least-loaded choice would always be the first member)."""
    game_a = load_sgf(SAMPLE_SGF)
    game_b = load_sgf(sorted((SHARED / "sgf").glob("*/*.sgf"))[0])

    def position(record: GameRecord, n: int, visits: int) -> str:
        q = record.query()
        q.update(id=f"{'a' if record is game_a else 'b'}{n}", moves=q["moves"][:n],
                 maxVisits=visits)
        return json.dumps(q)

    async def go() -> tuple[int, int, list[tuple[str, int]]]:
        c = Collector()
        async with make_pool(tmp_path, members=2) as pool:
            await pool.supervisor.wait_until_all_settled()
            s = pool.session(c)

            def visits() -> list[int]:
                return [m.visits_done for m in pool.members()]

            async def run_alone(line: str) -> int:
                """The member that answered it (whose visits grew)."""
                before = visits()
                s.submit(line)
                await asyncio.wait_for(pool.drain(), 120)
                [grew] = [i for i, done in enumerate(visits()) if done > before[i]]
                return grew

            member_a = await run_alone(position(game_a, 20, 2))
            # Game B's first position arrives while A's member is busy: it goes to the other.
            before = visits()
            s.submit(position(game_a, 21, 16))  # A's member is the busier when B's comes
            s.submit(position(game_b, 20, 2))
            await asyncio.wait_for(pool.drain(), 120)
            assert c.finals("b20")
            member_b = 1 - member_a
            assert visits()[member_b] > before[member_b]
            # From now on, one at a time on an idle pool: each game keeps its member.
            routed = []
            for n in range(21, 26):
                routed.append((f"b{n}", await run_alone(position(game_b, n, 2))))
                routed.append((f"a{n + 1}", await run_alone(position(game_a, n + 1, 2))))
        return member_a, member_b, routed

    member_a, member_b, routed = asyncio.run(go())
    assert member_a != member_b
    assert routed == [(qid, member_a if qid[0] == "a" else member_b) for qid, _ in routed]
