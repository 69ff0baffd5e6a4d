"""Chaos: 2 real members, 120 queries from real games, 5 random SIGKILLs.

Query ids repeat within a session, as KataGo allows: some queries share an id with the one
sent just before them (both in flight at once), others with one sent long before. Every
(session, id, turn) must get exactly as many final responses as queries asked for it (a
terminated turn's final may be a partial result or `noResults`); nothing lost, nothing
duplicated, no error; and no KataGo process may outlive the pool.
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

QUERIES = 120
KILLS = 5
BATCH = QUERIES // 15  # queries sent between pauses: 15 batches, kills after five of them


def games() -> list[GameRecord]:
    files = sorted((SHARED / "sgf").glob("*/*.sgf"))
    assert len(files) >= 40, f"game records missing from {SHARED / 'sgf'}"
    return [load_sgf(f) for f in files]


SESSIONS = 3
IDS = 24  # distinct ids (a multiple of SESSIONS): each is used four to six times, always by
# the same session

Terminate = tuple[float, list[int] | None] | None  # (after seconds, turnNumbers)


def query_id(i: int) -> str:
    """Queries i and i + SESSIONS share an id (sent one after the other to the same
    session, both in flight at once), and so do i and i + 2 * IDS (long apart)."""
    return f"c{((i // (2 * SESSIONS)) * SESSIONS + i % SESSIONS) % IDS}"


def board_after(q: dict[str, object], turn: int) -> tuple[object, ...]:
    """What KataGo's position hash depends on, for telling positions apart: the stones
    placed (captures aside) and the player to move."""
    moves = q["moves"][:turn]  # type: ignore[index]
    stones = tuple(sorted(map(tuple, q.get("initialStones") or [])))  # type: ignore[arg-type]
    return (stones, tuple(sorted(map(tuple, moves))),  # type: ignore[arg-type]
            q.get("initialPlayer"), turn % 2)


def build_queries(rng: random.Random) -> list[tuple[dict[str, object], Terminate, list[int]]]:
    """(query, when and what to terminate, expected turns)."""
    records = games()
    out = []
    for i in range(QUERIES):
        record = rng.choice(records)
        length = rng.randint(10, len(record.moves))
        q = record.query()
        q["moves"] = q["moves"][:length]  # type: ignore[index]
        q["id"] = query_id(i)
        q["maxVisits"] = rng.randint(1, 3)  # routing is under test, not search depth
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
            q["maxVisits"] = 24 if style == "one" else 5000
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
        sessions_out = [Collector() for _ in range(SESSIONS)]
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

            kill_after_batch = {1, 4, 7, 10, 13}  # of 15 batches: kills spread over the run
            pending = []
            for n, (q, terminate, _) in enumerate(plan):
                s = n % SESSIONS
                # A terminate names an id, so it stops every query of the session under that
                # id (as on KataGo); each stopped turn still ends with its one final.
                sessions[s].submit(json.dumps(q))
                if terminate is not None:
                    pending.append(asyncio.create_task(
                        terminate_later(s, str(q["id"]), terminate[0], terminate[1])))
                if n % BATCH == BATCH - 1:
                    if n // BATCH in kill_after_batch:
                        await kill_one()
                    await asyncio.sleep(0.3)
                    seen_pids.update(member_pids(pool))
            await asyncio.gather(*pending)
            await asyncio.wait_for(pool.drain(), 600)
            seen_pids.update(member_pids(pool))
        return sessions_out, kills

    collectors, kills = asyncio.run(go())
    assert kills == KILLS
    # The plan does reuse ids within a session, at once and later.
    per_session_id = Counter((n % SESSIONS, q["id"]) for n, (q, _, _) in enumerate(plan))
    assert len(per_session_id) == IDS and min(per_session_id.values()) >= 4
    assert plan[0][0]["id"] == plan[SESSIONS][0]["id"] == plan[2 * IDS][0]["id"]

    owed: Counter[tuple[int, str, int]] = Counter()
    boards: dict[tuple[int, str, int], list[tuple[object, ...]]] = {}
    for n, (q, _, turns) in enumerate(plan):
        for t in turns:
            key = (n % SESSIONS, str(q["id"]), t)
            owed[key] += 1
            boards.setdefault(key, []).append(board_after(q, t))
    got: Counter[tuple[int, str, int]] = Counter()
    for s, c in enumerate(collectors):
        stray = [m for m in c.messages if "error" in m]
        assert stray == [], f"session {s} got errors: {stray[:3]}"
        for qid in c.by_id:
            for m in c.finals(qid):
                got[(s, qid, m["turnNumber"])] += 1
    # Exactly once per (session, id, turn): as many finals as queries asked for it.
    assert {k: v for k, v in got.items() if owed[k] != v} == {} and \
        {k: v for k, v in owed.items() if got[k] != v} == {}
    # Where one id asked for the same turn of different positions, the answers are of
    # different positions: not one query's answer twice in place of the other's.
    for (s, qid, t), positions in boards.items():
        if len(positions) > 1 and len(set(positions)) == len(positions):
            hashes = [m["rootInfo"]["thisHash"] for m in collectors[s].finals(qid)
                      if m["turnNumber"] == t and "rootInfo" in m]
            assert len(set(hashes)) == len(hashes), (s, qid, t, hashes)
    # No KataGo outlives the pool: no orphans, and no zombies left unreaped.
    leftovers = []
    for pid in seen_pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftovers.append((pid, psutil.Process(pid).status()))
    assert leftovers == []
