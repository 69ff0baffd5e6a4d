"""Router and supervisor logic with in-process scripted members.

FAKE MEMBERS, named as such: these cases need faults no real engine produces on demand (a
query that kills every member it reaches, a member that never becomes ready, a member that
fails to start every time). Everything a real engine can show is tested on KataGo itself in
test_pool.py and test_chaos.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from pool_helpers import Collector, wait_for

from katapool.pool import Pool, PoolPolicy
from katapool.pool.member import MemberStartError
from katapool.pool.router import Router, Session
from katapool.pool.supervisor import Slot, SlotState


class ScriptedMember:
    """FAKE: answers every turn at once; dies on any query carrying "poison"."""

    def __init__(self, name: str, start_delay: float = 0.0, fail_start: str | None = None,
                 exits: bool = False) -> None:
        self.name = name
        self.start_delay = start_delay
        self.fail_start = fail_start
        self.exits = exits  # its failed start is an engine that quit saying why
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._alive = False
        self.received: list[dict[str, Any]] = []

    @property
    def alive(self) -> bool:
        return self._alive

    async def start(self) -> None:
        await asyncio.sleep(self.start_delay)
        if self.fail_start:
            raise MemberStartError(self.fail_start, permanent="bad config" in self.fail_start,
                                   exited=self.exits)
        self._alive = True

    async def send(self, message: dict[str, Any]) -> None:
        self.received.append(message)
        if not self._alive:
            return
        if message.get("poison"):
            self._alive = False
            self._queue.put_nowait(None)
            return
        action = message.get("action")
        if action == "query_version":
            self._queue.put_nowait({**message, "version": "fake", "git_hash": "fake"})
        elif action is not None:
            self._queue.put_nowait(dict(message))
        else:
            turns = message.get("analyzeTurns") or [len(message["moves"])]
            for t in sorted(set(turns)):
                self._queue.put_nowait({"id": message["id"], "isDuringSearch": False,
                                        "turnNumber": t, "rootInfo": {"visits": 1}})

    async def receive(self) -> dict[str, Any] | None:
        return await self._queue.get()

    async def stop(self, grace: float) -> None:
        await self.kill()

    async def kill(self) -> None:
        if self._alive:
            self._alive = False
            self._queue.put_nowait(None)

    def describe_failure(self) -> str:
        return "fake member died"


def q(qid: str, **extra: object) -> str:
    return json.dumps({"id": qid, "moves": [["B", "Q16"]], "analyzeTurns": [0, 1], **extra})


FAST = PoolPolicy(backoff_initial=0.01, backoff_max=0.05, responsive_interval=3600,
                  functional_interval=3600, crash_budget=50)


def test_poison_query_is_quarantined_and_others_are_served() -> None:
    async def go() -> tuple[Collector, int]:
        c = Collector()
        pool = Pool([lambda i, g: ScriptedMember(f"m{i}") for _ in range(2)],
                    FAST.model_copy(update={"quarantine_after": 3}))
        async with pool:
            s = pool.session(c)
            s.submit(q("poison", poison=True))
            for i in range(5):
                s.submit(q(f"ok{i}"))
            await asyncio.wait_for(pool.drain(), 10)
            return c, sum(m.restarts for m in pool.members())

    c, restarts = asyncio.run(go())
    [err] = c.by_id["poison"]
    assert "quarantined" in err["error"] and "3 engine members died" in err["error"]
    assert restarts == 3
    for i in range(5):
        assert sorted(m["turnNumber"] for m in c.finals(f"ok{i}")) == [0, 1]


def test_queries_wait_for_a_member_and_terminate_works_while_waiting() -> None:
    async def go() -> Collector:
        c = Collector()
        pool = Pool([lambda i, g: ScriptedMember("slow", start_delay=0.5)], FAST)
        await pool.start(wait="none")
        s = pool.session(c)
        s.submit(q("early"))
        s.submit(q("cancelled"))
        s.submit('{"id":"t","action":"terminate","terminateId":"cancelled"}')
        assert [m["turnNumber"] for m in c.by_id["cancelled"]] == [0, 1]  # answered at once
        assert all(m.get("noResults") for m in c.by_id["cancelled"])
        await asyncio.wait_for(pool.drain(), 10)
        await pool.close()
        return c

    c = asyncio.run(go())
    assert sorted(m["turnNumber"] for m in c.finals("early")) == [0, 1]
    assert c.by_id["t"] == [{"id": "t", "action": "terminate", "terminateId": "cancelled"}]


def test_terminate_is_scoped_to_the_callers_session() -> None:
    async def go() -> tuple[Collector, Collector]:
        a, b = Collector(), Collector()
        pool = Pool([lambda i, g: ScriptedMember("slow", start_delay=0.3)], FAST)
        await pool.start(wait="none")
        sa, sb = pool.session(a), pool.session(b)
        sa.submit(q("same"))
        sb.submit(q("same"))
        sb.submit('{"id":"t","action":"terminate_all"}')
        await asyncio.wait_for(pool.drain(), 10)
        await pool.close()
        return a, b

    a, b = asyncio.run(go())
    assert not any(m.get("noResults") for m in a.finals("same"))
    assert all(m.get("noResults") for m in b.finals("same"))


def test_all_members_failing_answers_with_the_cause() -> None:
    async def go() -> Collector:
        c = Collector()
        pool = Pool([lambda i, g: ScriptedMember("broken", fail_start="bad config: no key X")],
                    FAST)
        await pool.start(wait="none")
        s = pool.session(c)
        s.submit(q("waiting"))
        await wait_for(lambda: "waiting" in c.by_id, 5, "an answer")
        s.submit(q("late"))
        assert pool.members()[0].state == "failed"
        await pool.close()
        return c

    c = asyncio.run(go())
    for qid in ("waiting", "late"):
        [err] = c.by_id[qid]
        assert err["error"] == "no engine available: bad config: no key X"


def test_crash_budget_stops_a_flapping_member() -> None:
    async def go() -> tuple[SlotState, str | None, int]:
        pool = Pool([lambda i, g: ScriptedMember("flaky", fail_start="out of memory")],
                    FAST.model_copy(update={"crash_budget": 3}))
        await pool.start(wait="none")
        await pool.supervisor.wait_until_all_settled()
        slot = pool.supervisor.slots[0]
        await pool.close()
        return slot.state, slot.last_cause, slot.generation

    state, cause, generation = asyncio.run(go())
    assert state is SlotState.FAILED and generation == 4
    assert cause is not None and "4 times" in cause and "out of memory" in cause


SAID = "member-0 died before it was ready: engine failed: Key 'x' must be in the range 1 to 9"


def test_a_start_failing_twice_the_same_way_fails_the_slot_at_once() -> None:
    """An engine that quits before it was ever ready, saying the same thing twice (but for
    KataGo's time stamp), will say it again: no backoff and restarts through the crash
    budget; its words reach the queries waiting."""
    said = (f"2026-12-07 06:00:{g % 60:02d}+0000: {SAID}" for g in itertools.count())

    async def go() -> tuple[SlotState, str | None, int, Collector]:
        c = Collector()
        pool = Pool([lambda i, g: ScriptedMember("bad", fail_start=next(said), exits=True)],
                    FAST)
        await pool.start(wait="none")
        pool.session(c).submit(q("waiting"))
        await asyncio.wait_for(pool.supervisor.wait_until_all_settled(), 60)  # a hang guard
        slot = pool.supervisor.slots[0]
        await pool.close()
        return slot.state, slot.last_cause, slot.generation, c

    state, cause, generation, c = asyncio.run(go())
    assert state is SlotState.FAILED and generation == 2
    assert cause is not None and cause.startswith("failed to start twice the same way") \
        and SAID in cause
    [err] = c.by_id["waiting"]
    assert "no engine available" in err["error"] and "must be in the range 1 to 9" in err["error"]


def test_start_failures_that_may_pass_or_follow_a_ready_member_keep_the_crash_budget() -> None:
    """Restarts as before: failures that differ, a failure that is no engine's own word (a
    spawn error, a timeout), and a slot whose member was ready once and then crashed."""
    budget = FAST.model_copy(update={"crash_budget": 3})
    cases = {
        "differing": lambda i, g: ScriptedMember("m", fail_start=f"{SAID} (try {g})", exits=True),
        "not the engine's word": lambda i, g: ScriptedMember("m", fail_start="could not spawn"),
        "was ready": lambda i, g: ScriptedMember("m", fail_start=None if g == 1 else SAID,
                                                  exits=True),
    }

    async def go(factory: Any) -> tuple[SlotState, int]:
        pool = Pool([factory], budget)
        await pool.start(wait="none")
        if factory is cases["was ready"]:
            await pool.supervisor.wait_until_any_ready()
            pool.session(Collector()).submit(q("poison", poison=True))  # it crashes
            await wait_for(lambda: pool.supervisor.slots[0].generation > 1, 60, "its restart")
        await asyncio.wait_for(pool.supervisor.wait_until_all_settled(), 60)  # a hang guard
        slot = pool.supervisor.slots[0]
        await pool.close()
        return slot.state, slot.generation

    for name, factory in cases.items():
        assert asyncio.run(go(factory)) == (SlotState.FAILED, 4), name


def test_clear_cache_is_acknowledged_before_the_pool_drains() -> None:
    async def go() -> Collector:
        c = Collector()
        pool = Pool([lambda i, g: ScriptedMember(f"m{i}") for _ in range(2)], FAST)
        async with pool:
            await pool.supervisor.wait_until_all_settled()
            pool.session(c).submit('{"id":"c","action":"clear_cache"}')
            await asyncio.wait_for(pool.drain(), 5)
        return c

    assert asyncio.run(go()).by_id["c"] == [{"id": "c", "action": "clear_cache"}]


def test_actions_when_no_engine_is_left() -> None:
    async def go() -> Collector:
        c = Collector()
        pool = Pool([lambda i, g: ScriptedMember("broken", fail_start="bad config: X")], FAST)
        await pool.start(wait="none")
        await pool.supervisor.wait_until_all_settled()
        s = pool.session(c)
        for line in ['{"id":"m","action":"query_models"}', '{"id":"c","action":"clear_cache"}',
                     '{"id":"v","action":"query_version"}']:
            s.submit(line)
        await asyncio.wait_for(pool.drain(), 5)
        await pool.close()
        return c

    c = asyncio.run(go())
    assert c.by_id["m"][0]["error"] == "no engine available: bad config: X"
    assert c.by_id["c"][0]["error"] == "no engine available: bad config: X"
    assert c.by_id["v"][0]["version"] == ""  # answered by katapool itself


def test_a_query_with_many_turns_is_split_over_members() -> None:
    async def go() -> tuple[Collector, list[ScriptedMember]]:
        c = Collector()
        made: list[ScriptedMember] = []

        def factory(i: int, g: int) -> ScriptedMember:
            made.append(ScriptedMember(f"m{i}"))
            return made[-1]

        pool = Pool([factory, factory, factory], FAST)
        async with pool:
            await pool.supervisor.wait_until_all_settled()
            turns = list(range(0, 30))
            pool.session(c).submit(json.dumps({
                "id": "game", "moves": [["B", "Q16"], ["W", "D4"]] * 15, "analyzeTurns": turns,
                "priorities": [t % 3 for t in turns]}))
            await asyncio.wait_for(pool.drain(), 5)
        return c, made

    c, members = asyncio.run(go())
    assert sorted(m["turnNumber"] for m in c.finals("game")) == list(range(30))
    parts = [m for member in members for m in member.received if "analyzeTurns" in m]
    assert len(parts) == 3, "one part per member"
    seen = sorted(t for p in parts for t in p["analyzeTurns"])
    assert seen == list(range(30)), "each turn asked of exactly one member"
    for p in parts:  # each turn keeps its own priority
        assert p["priorities"] == [t % 3 for t in p["analyzeTurns"]]
    assert len({p["id"] for p in parts}) == 3 and all(p["id"] != "game" for p in parts)


def test_a_split_query_survives_losing_one_part() -> None:
    async def go() -> Collector:
        c = Collector()
        made: list[ScriptedMember] = []

        def factory(i: int, g: int) -> ScriptedMember:
            member = ScriptedMember(f"m{i}-{g}")
            if i == 0 and g == 1:
                # FAKE fault: the first member dies on its first analysis query.
                original = member.send

                async def dying_send(message: dict[str, Any]) -> None:
                    if "analyzeTurns" in message:
                        message = {**message, "poison": True}
                    await original(message)
                member.send = dying_send  # type: ignore[method-assign]
            made.append(member)
            return member

        pool = Pool([factory, factory], FAST)
        async with pool:
            await pool.supervisor.wait_until_all_settled()
            pool.session(c).submit(json.dumps({
                "id": "game", "moves": [["B", "Q16"], ["W", "D4"]] * 10,
                "analyzeTurns": list(range(20))}))
            await asyncio.wait_for(pool.drain(), 5)
        return c

    c = asyncio.run(go())
    finals = sorted(m["turnNumber"] for m in c.finals("game"))
    assert finals == list(range(20)), "every turn once, none twice"


class PostingSupervisor:
    """Stands in for the supervisor around a bare router: slots whose messages are recorded."""

    def __init__(self, count: int) -> None:
        self.slots = [Slot(i, lambda i, g: None) for i in range(count)]  # type: ignore[arg-type, return-value]
        self.posted: dict[int, list[dict[str, Any]]] = {i: [] for i in range(count)}
        for slot in self.slots:
            slot.post = self.posted[slot.index].append  # type: ignore[method-assign, assignment]

    def mark_unhealthy(self, slot: Slot, reason: str) -> None:
        pass


def test_a_member_ready_late_takes_the_queued_turns_of_a_busy_one() -> None:
    """Everything went to member 0 while member 1 was starting. Once member 1 is ready it
    takes the newest queued turns (not the oldest, likely searching; not a turn that already
    reported, nor a terminated one): they are terminated on member 0, whose late lines for
    them go nowhere, and each turn still gets exactly one final, from member 1."""
    async def go() -> tuple[Collector, PostingSupervisor, Router, dict[str, str]]:
        c = Collector()
        router = Router(PoolPolicy(split_min_turns=4), "v", None)
        sup = PostingSupervisor(2)
        router.supervisor = sup  # type: ignore[assignment]
        busy, late = sup.slots
        busy.state = SlotState.READY
        s = Session(router, c)
        for i in range(4):
            s.submit(q(f"single{i}", analyzeTurns=[0]))
        s.submit(q("game", moves=[["B", "Q16"]] * 9, analyzeTurns=list(range(10))))
        s.submit(q("stopped", analyzeTurns=[0]))
        s.submit('{"id":"t","action":"terminate","terminateId":"stopped"}')
        keys = {qid: m["id"] for qid, m in zip(
            ["single0", "single1", "single2", "single3", "game", "stopped"],
            [m for m in sup.posted[0] if "analyzeTurns" in m], strict=True)}
        # The last game turn reported a search in progress: it stays where it is.
        router.on_message(busy, {"id": keys["game"], "isDuringSearch": True, "turnNumber": 9,
                                 "rootInfo": {"visits": 1}})
        assert len(router.by_key) == 6 and router.parts_on(late) == 0
        late.state = SlotState.READY
        router.on_ready(late)
        await asyncio.sleep(0)
        moved = [m for m in sup.posted[0] if m.get("action") == "terminate"
                 and m["id"].endswith("-moved")]
        taken = [m for m in sup.posted[1] if "analyzeTurns" in m]
        assert moved and taken
        # KataGo answers each terminated queued turn with noResults; then member 0 finishes
        # what it kept, member 1 what it took.
        for m in moved:
            for t in m["turnNumbers"]:
                router.on_message(busy, {"id": m["terminateId"], "isDuringSearch": False,
                                         "noResults": True, "turnNumber": t})
        for key, (_, part) in list(router.by_key.items()):
            for t in sorted(part.open_turns):
                router.on_message(part.slot, {"id": key, "isDuringSearch": False,
                                              "turnNumber": t, "rootInfo": {"visits": 1}})
        await asyncio.sleep(0)
        assert router.outstanding == 0 and not router.by_key
        assert router.load_of(busy.index).load == router.load_of(late.index).load == 0
        return c, sup, router, keys

    c, sup, router, keys = asyncio.run(go())
    moved_turns = {(m["terminateId"], t) for m in sup.posted[0]
                   if m.get("action") == "terminate" and m["id"].endswith("-moved")
                   for t in m["turnNumbers"]}
    taken = [m for m in sup.posted[1] if "analyzeTurns" in m]
    assert router.stats["rebalanced_turns"] == len(moved_turns) == sum(
        len(m["analyzeTurns"]) for m in taken)
    assert (keys["single0"], 0) not in moved_turns, "the oldest turn stays"
    assert (keys["game"], 9) not in moved_turns, "a turn already searching stays"
    assert (keys["stopped"], 0) not in moved_turns, "a terminated turn is not moved"
    # 15 turns of equal cost on member 0: the newest 7 that may move go, so each has about
    # half (the searching turn 9 stays, and the terminated one counts where it is).
    assert moved_turns == {(keys["game"], t) for t in range(2, 9)}
    for qid, turns in [*((f"single{i}", [0]) for i in range(4)), ("game", list(range(10)))]:
        finals = c.finals(qid)
        assert sorted(m["turnNumber"] for m in finals) == turns, qid
        assert not any(m.get("noResults") for m in finals), qid
    assert len(c.finals("stopped")) == 1
