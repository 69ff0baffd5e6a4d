"""Chaos: 2 real members, 300 queries from real games, 5 random SIGKILLs.

Every turn must get exactly one final response (a terminated turn's final may be a partial
result or `noResults`); nothing lost, nothing duplicated, no error; and no KataGo process may
outlive the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
from collections import Counter
from pathlib import Path

import psutil
import pytest
from pool_helpers import Collector, make_pool, member_pids, wait_for
from test_pool import pool_env  # noqa: F401  (fixture)

from conftest import SHARED
from katapool.game.record import GameRecord, load_sgf
from katapool.pool import PoolPolicy

pytestmark = pytest.mark.engine

QUERIES = 300
KILLS = 5


def games() -> list[GameRecord]:
    files = sorted((SHARED / "sgf").glob("*/*.sgf"))
    assert len(files) >= 40, f"game records missing from {SHARED / 'sgf'}"
    return [load_sgf(f) for f in files]


Terminate = tuple[float, list[int] | None] | None  # (after seconds, turnNumbers)


def build_queries(rng: random.Random) -> list[tuple[dict[str, object], Terminate, list[int]]]:
    """(query, when and what to terminate, expected turns)."""
    records = games()
    out = []
    for i in range(QUERIES):
        record = rng.choice(records)
        length = rng.randint(10, len(record.moves))
        q = record.query()
        q["moves"] = q["moves"][:length]  # type: ignore[index]
        q["id"] = f"c{i % 250}"  # some ids are reused on purpose
        q["maxVisits"] = rng.randint(1, 6)
        kind = rng.random()
        turns = [length]
        if kind < 0.45:
            # Mostly a few turns; some long enough to be split over both members.
            count = rng.randint(8, 14) if kind < 0.1 else rng.randint(2, 5)
            turns = sorted(rng.sample(range(length + 1), min(count, length + 1)))
            q["analyzeTurns"] = turns
            if rng.random() < 0.5:
                q["priorities"] = [rng.randint(-5, 5) for _ in turns]
        elif rng.random() < 0.5:
            q["priority"] = rng.randint(-10, 10)
        terminate = None
        if rng.random() < 0.08:
            # Long searches, cut short: all turns, or the listed turns (all of them), or one
            # turn of a query whose other turns finish on their own.
            style = rng.choice(["all", "listed", "one"])
            q["maxVisits"] = 40 if style == "one" else 5000
            terminate = (rng.uniform(0.05, 0.6), None if style == "all" else
                         turns if style == "listed" else turns[:1])
        out.append((q, terminate, turns))
    return out


def test_chaos(pool_env: Path, tmp_path: Path) -> None:  # noqa: F811
    rng = random.Random(20261129)
    plan = build_queries(rng)
    policy = PoolPolicy(backoff_initial=0.1, backoff_max=1.0, crash_budget=10,
                        quarantine_after=4)
    seen_pids: set[int] = set()

    async def go() -> tuple[list[Collector], int]:
        sessions_out = [Collector() for _ in range(3)]
        kills = 0
        async with make_pool(tmp_path, policy=policy) as pool:
            await pool.supervisor.wait_until_all_settled()
            sessions = [pool.session(c) for c in sessions_out]

            async def kill_one() -> None:
                """SIGKILL a random member while both are up and work is in flight."""
                nonlocal kills
                await wait_for(lambda: len(member_pids(pool)) == 2, 60, "both members up")
                await asyncio.sleep(rng.uniform(0.1, 0.8))
                pids = member_pids(pool)
                seen_pids.update(pids)
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1

            async def terminate_later(session_index: int, qid: str, delay: float,
                                      turns: list[int] | None) -> None:
                await asyncio.sleep(delay)
                msg: dict[str, object] = {"id": f"t-{qid}", "action": "terminate", "terminateId": qid}
                if turns is not None:
                    msg["turnNumbers"] = turns
                sessions[session_index].submit(json.dumps(msg))

            kill_after_batch = {1, 4, 7, 10, 13}  # of 15 batches of 20: kills spread over the run
            pending = []
            for n, (q, terminate, _) in enumerate(plan):
                s = n % 3
                # Query ids are unique per session here, so terminate hits one query only.
                q = {**q, "id": f"s{s}-{n}"}
                sessions[s].submit(json.dumps(q))
                if terminate is not None:
                    pending.append(asyncio.create_task(
                        terminate_later(s, str(q["id"]), terminate[0], terminate[1])))
                if n % 20 == 19:
                    if n // 20 in kill_after_batch:
                        await kill_one()
                    await asyncio.sleep(0.3)
                    seen_pids.update(member_pids(pool))
            await asyncio.gather(*pending)
            await asyncio.wait_for(pool.drain(), 600)
            seen_pids.update(member_pids(pool))
        return sessions_out, kills

    collectors, kills = asyncio.run(go())
    assert kills == KILLS
    for n, (_, _, turns) in enumerate(plan):
        c = collectors[n % 3]
        qid = f"s{n % 3}-{n}"
        assert c.errors(qid) == [], f"{qid} got an error: {c.errors(qid)}"
        counts = Counter(m["turnNumber"] for m in c.finals(qid))
        assert set(counts) == set(turns), f"{qid}: finals for {sorted(counts)}, expected {turns}"
        assert max(counts.values()) == 1, f"{qid}: duplicated finals {counts}"
    # No KataGo outlives the pool: no orphans, and no zombies left unreaped.
    leftovers = []
    for pid in seen_pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftovers.append((pid, psutil.Process(pid).status()))
    assert leftovers == []
