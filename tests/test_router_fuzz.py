"""Random sequences of router events against its invariants (no engine: the router alone).

Each sequence mixes queries (single-part and split), finals, engine errors, member losses
(also in the window between a member going down and its loss being reported), members
coming back (and taking queued turns from busy members), late lines for turns a part no longer
owns, query_models and terminates with and without turnNumbers; then brings every
member up and answers everything. Afterwards: nothing outstanding, no load or part counts
left on any slot, and every query got each of its turns' finals exactly once, or exactly one
error.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
from typing import Any

import pytest

from katapool.pool.policy import PoolPolicy
from katapool.pool.router import Router, Session
from katapool.pool.supervisor import Slot, SlotState


class RecordingSupervisor:
    """Stands in for the supervisor: slots whose messages are recorded, not sent."""

    def __init__(self, count: int) -> None:
        self.slots = [Slot(i, lambda i, g: None) for i in range(count)]  # type: ignore[arg-type, return-value]
        for slot in self.slots:
            slot.state = SlotState.READY
            slot.post = lambda message: None  # type: ignore[method-assign]

    def mark_unhealthy(self, slot: Slot, reason: str) -> None:
        pass


def final(router: Router, slot: Slot, key: str, turn: int) -> None:
    router.on_message(slot, {"id": key, "isDuringSearch": False, "turnNumber": turn})


def query(qid: str, turns: int) -> str:
    return json.dumps({"id": qid, "moves": [["B", "Q16"]] * turns,
                       "analyzeTurns": list(range(turns))})


async def run_sequence(seed: int) -> list[Any]:
    rnd = random.Random(seed)
    router = Router(PoolPolicy(split_min_turns=rnd.randint(1, 3),
                               quarantine_after=rnd.randint(1, 4)), "v", None)
    supervisor = RecordingSupervisor(rnd.randint(1, 4))
    router.supervisor = supervisor  # type: ignore[assignment]
    out: list[dict[str, Any]] = []
    session = Session(router, out.append)
    slots = supervisor.slots
    turns_of: dict[str, set[int]] = {}
    actions: set[str] = set()
    for _ in range(rnd.randint(5, 60)):
        op = rnd.random()
        if op < 0.2:
            qid = f"q{len(turns_of) + len(actions)}"
            if rnd.random() < 0.1:
                actions.add(qid)
                session.submit(json.dumps({"id": qid, "action": "query_models"}))
            else:
                n = rnd.randint(1, 12)
                turns_of[qid] = set(range(n))
                session.submit(query(qid, n))
        elif op < 0.5 and router.by_key:
            key = rnd.choice(list(router.by_key))
            flight, part = router.by_key[key]
            if not part.slot.ready and rnd.random() < 0.8:
                continue
            if flight.kind == "action":
                router.on_message(part.slot, {"id": key, "action": "query_models", "models": []})
            elif rnd.random() < 0.03:
                router.on_message(part.slot, {"id": key, "error": "engine error"})
            else:
                final(router, part.slot, key, rnd.choice(sorted(part.open_turns)))
        elif op < 0.62:
            slot = rnd.choice(slots)
            if slot.ready:
                slot.state = SlotState.RESTARTING  # down; its loss may be reported later
                if rnd.random() < 0.5:
                    router.on_lost(slot, "died")
        elif op < 0.75:
            slot = rnd.choice(slots)
            if slot.state is SlotState.RESTARTING:
                router.on_lost(slot, "died")
                slot.state = SlotState.READY
                router.on_ready(slot)
        elif op < 0.8 and router.by_key:
            # A late line for a turn its part no longer owns (answered, or moved to an idle
            # member and terminated here): KataGo's noResults for it must go nowhere.
            key = rnd.choice(list(router.by_key))
            flight, part = router.by_key[key]
            stale = sorted(flight.turns - part.open_turns)
            if flight.kind == "analysis" and stale and part.slot.ready:
                router.on_message(part.slot, {"id": key, "isDuringSearch": False,
                                              "noResults": True, "turnNumber": rnd.choice(stale)})
        elif op < 0.88 and turns_of:
            msg: dict[str, Any] = {"id": "t", "action": "terminate",
                                   "terminateId": rnd.choice(sorted(turns_of))}
            if rnd.random() < 0.5:
                msg["turnNumbers"] = rnd.sample(range(12), rnd.randint(0, 5))
            session.submit(json.dumps(msg))
        await asyncio.sleep(0)
    for _ in range(5000):  # settle: every member up, every open turn answered
        for slot in slots:
            if slot.state is SlotState.RESTARTING:
                router.on_lost(slot, "died")
            if not slot.ready:
                slot.state = SlotState.READY
                router.on_ready(slot)
        await asyncio.sleep(0)
        if not router.by_key:
            if router.outstanding == 0:
                break
            continue
        key = next(iter(router.by_key))
        flight, part = router.by_key[key]
        if flight.kind == "action":
            router.on_message(part.slot, {"id": key, "action": "query_models", "models": []})
        else:
            final(router, part.slot, key, min(part.open_turns))
    await asyncio.sleep(0)

    problems: list[Any] = []
    if router.outstanding or router.by_key or router.waiting or router._solo \
            or any(m.load or m.parts for m in router.loads.values()):
        problems.append(("leftover state", router.outstanding, list(router.by_key)))
    per: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for m in out:
        if m.get("id") != "t":
            per[m["id"]].append(m)
    for qid in actions:
        if len(per[qid]) != 1:
            problems.append((qid, "action answers", per[qid]))
    for qid, turns in turns_of.items():
        errors = [m for m in per[qid] if "error" in m]
        finals = [m["turnNumber"] for m in per[qid] if m.get("isDuringSearch") is False]
        if errors:
            if len(errors) != 1:
                problems.append((qid, "errors", len(errors)))
        elif sorted(finals) != sorted(turns):
            problems.append((qid, "finals", sorted(finals), sorted(turns)))
    return problems


@pytest.mark.parametrize("block", range(4))
def test_router_invariants_hold_under_random_events(block: int) -> None:
    async def go() -> list[Any]:
        found = []
        for seed in range(block * 250, (block + 1) * 250):
            problems = await run_sequence(seed)
            if problems:
                found.append((seed, problems[:3]))
        return found

    assert asyncio.run(go()) == []
