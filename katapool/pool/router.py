"""Route analysis queries across the pool, and lose none of them.

Every accepted query becomes a *flight*: its payload, the turns still owed a final response,
and the *parts* in progress, each a set of its turns on one member (a query with many turns,
such as a whole game, is split over several members, as KataGo's own multi-GPU process
spreads it over its GPUs). Callers' ids are kept exactly; on the wire to a member each
attempt gets a unique internal id, so two callers (or one caller reusing an id) never collide
and a dead member's late lines can never be mistaken for a live one's. When a member is lost,
its flights' unfinished turns go to another member; finals already delivered are never sent
twice, and partial results are only passed on when they are newer than what the caller saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from katapool.config.policy import PoolPolicy
from katapool.pool.supervisor import PLANNED_STOP, Slot, SlotState, Supervisor
from katapool.protocol.analysis import (
    BadRequest,
    Request,
    error_response,
    is_final,
    parse_request,
    report_seconds,
    restrict_to_turns,
)

log = logging.getLogger(__name__)

Deliver = Callable[[dict[str, Any]], None]
AFFINITY_MOVES = 12  # positions of one game share this opening prefix
LATENCIES_KEPT = 256  # per member, for its latency percentiles


@dataclass
class MemberLoad:
    """The router's own record of one member (by slot index): the work it holds, and what it
    has done. It outlives restarts, as the slot does; the supervisor never touches it."""

    load: float = 0.0  # outstanding turns weighted by visits
    parts: int = 0  # parts in flight on it
    visits_done: int = 0  # visits of the final responses it gave (for visits/s)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))


class Session:
    """One caller (the stdio of `katapool analysis`, a daemon connection, …)."""

    _ids = itertools.count(1)

    def __init__(self, router: Router, deliver: Deliver) -> None:
        self.router = router
        self.deliver = deliver
        self.number = next(self._ids)
        self.flights: set[Flight] = set()
        self.closed = False

    def close(self) -> None:
        """The caller is gone: stop its queries (their late answers go nowhere)."""
        self.closed = True
        self.router.terminate_for(self, None, None)
        if not self.flights:
            self.router._session_idle.pop(self.number, None)

    def submit(self, line: str) -> None:
        self.router.submit(self, line)

    def submit_request(self, request: Request) -> None:
        self.router.submit_request(self, request)

    def terminate(self, terminate_id: str | None, turns: list[int] | None = None) -> None:
        """Stop this caller's query ``terminate_id`` (every query if None), with no reply of
        its own; the stopped turns still end with their final (``noResults``) responses."""
        self.router.terminate_for(self, terminate_id, turns)

    @property
    def in_flight(self) -> int:
        return len(self.flights)

    async def drained(self) -> None:
        await self.router.wait_session_idle(self)


@dataclass(eq=False)
class Part:
    """Some of a flight's turns, on one member, under one internal id."""

    key: str
    slot: Slot
    open_turns: set[int]
    cost_per_turn: float
    sent: float = field(default_factory=time.monotonic)
    started: set[int] = field(default_factory=set)  # turns the member reported searching

    @property
    def cost(self) -> float:
        return len(self.open_turns) * self.cost_per_turn


@dataclass(eq=False)
class Flight:
    number: int
    session: Session
    request: Request
    turns: set[int]
    kind: str = "analysis"  # or "action" (query_models): done at its first answer
    finals: set[int] = field(default_factory=set)
    delivered_visits: dict[int, int] = field(default_factory=dict)
    terminated: set[int] = field(default_factory=set)
    parts: list[Part] = field(default_factory=list)
    attempts: int = 0
    deaths: int = 0
    warnings_seen: set[str] = field(default_factory=set)
    created: float = field(default_factory=time.monotonic)
    overdue_at: float | None = None
    deadline: float | None = None  # monotonic time after which it is overdue
    waiting_since: float | None = None  # queued for a member (none could take it) since
    wants_partials: bool = False
    partial_every: float = math.inf  # the caller's reportDuringSearchEvery
    first_partial_after: float = 0.0
    last_partial: dict[int, float] = field(default_factory=dict)

    @property
    def client_id(self) -> str:
        return self.request.id

    def remaining(self) -> list[int]:
        return sorted(self.turns - self.finals)

    def unassigned(self) -> list[int]:
        """Turns owed a final that no member is working on."""
        busy: set[int] = set()
        for part in self.parts:
            busy |= part.open_turns
        return sorted(self.turns - self.finals - busy)


class Router:
    def __init__(self, policy: PoolPolicy, version: str, git_hash: str | None) -> None:
        self.policy = policy
        self.version = version
        self.git_hash = git_hash or ""
        self.supervisor: Supervisor | None = None
        self.by_key: dict[str, tuple[Flight, Part]] = {}
        self.waiting: deque[Flight] = deque()
        self._waiting_set: set[Flight] = set()
        self.outstanding = 0
        self._numbers = itertools.count(1)
        self._affinity: dict[str, int] = {}
        self.loads: dict[int, MemberLoad] = {}  # by slot index
        self._solo: dict[int, Flight] = {}  # slot -> the suspect running alone on it
        self._idle = asyncio.Event()
        self._idle.set()
        self._session_idle: dict[int, asyncio.Event] = {}
        self._clears: dict[str, tuple[Session, dict[str, Any], set[int]]] = {}
        self._failed_reason: str | None = None
        self._rebalance_due = False
        self.stats = {"accepted": 0, "rejected": 0, "rerouted": 0, "rerouted_turns": 0,
                      "rebalanced_turns": 0, "quarantined": 0, "duplicates_dropped": 0}

    # --- callers ---------------------------------------------------------------------------

    def submit(self, session: Session, line: str) -> None:
        try:
            request = parse_request(line.rstrip("\r\n"))
        except BadRequest as exc:
            self.stats["rejected"] += 1
            session.deliver(exc.response)
            return
        self.submit_request(session, request)

    def submit_request(self, session: Session, request: Request) -> None:
        """Route a request already parsed (and checked) by an interface in front."""
        if request.action in ("query_version", "terminate", "terminate_all"):
            self._action(session, request)  # answered here, at once
            return
        if self.outstanding >= self.policy.max_outstanding:
            self.stats["rejected"] += 1
            session.deliver(error_response(
                f"katapool is full: {self.outstanding} queries outstanding "
                f"(max_outstanding {self.policy.max_outstanding}); send it again later",
                request.id))
            return
        if self._failed_reason is not None:
            session.deliver(error_response(f"no engine available: {self._failed_reason}", request.id))
            return
        if request.action is not None:
            self._action(session, request)
            return
        flight = Flight(next(self._numbers), session, request, set(request.turns))
        flight.deadline = self._deadline_for(flight)
        # As in KataGo: either field asks for partial results; the first comes after
        # firstReportDuringSearchAfter, else after one reportDuringSearchEvery; without an
        # interval, that first one is all.
        every = report_seconds(request.raw.get("reportDuringSearchEvery"))
        first = report_seconds(request.raw.get("firstReportDuringSearchAfter"))
        if every is not None or first is not None:
            flight.wants_partials = True
            flight.partial_every = every if every is not None else math.inf
            flight.first_partial_after = first if first is not None else every or 0.0
        self._accept(flight)
        self._dispatch(flight)

    def _deadline_for(self, flight: Flight) -> float | None:
        """A query's own deadline: from its time limit, if it has one (a pondering query
        without one may run for hours, as it would on KataGo); else the policy's, if set."""
        limits = []
        settings = flight.request.raw.get("overrideSettings")
        max_time = settings.get("maxTime") if isinstance(settings, dict) else None
        if isinstance(max_time, (int, float)) and not isinstance(max_time, bool) and max_time > 0:
            limits.append(max_time * len(flight.turns) + self.policy.deadline_grace)
        if self.policy.query_deadline is not None:
            limits.append(self.policy.query_deadline)
        return flight.created + min(limits) if limits else None

    def _accept(self, flight: Flight) -> None:
        self.stats["accepted"] += 1
        self.outstanding += 1
        flight.session.flights.add(flight)
        self._idle.clear()
        self._session_event(flight.session).clear()

    def _session_event(self, session: Session) -> asyncio.Event:
        event = self._session_idle.get(session.number)
        if event is None:
            event = self._session_idle[session.number] = asyncio.Event()
            event.set()
        return event

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def wait_session_idle(self, session: Session) -> None:
        await self._session_event(session).wait()

    # --- dispatch ----------------------------------------------------------------------------

    def _slots(self) -> list[Slot]:
        return self.supervisor.slots if self.supervisor else []

    def load_of(self, index: int) -> MemberLoad:
        """The record of slot ``index`` (a fresh one for a member that has had no work)."""
        record = self.loads.get(index)
        if record is None:
            record = self.loads[index] = MemberLoad()
        return record

    def _load(self, slot: Slot) -> float:
        return self.load_of(slot.index).load

    def _affinity_key(self, flight: Flight) -> str:
        raw = flight.request.raw
        moves = raw.get("moves") or []
        basis = [raw.get("boardXSize"), raw.get("boardYSize"), raw.get("rules"), raw.get("komi"),
                 raw.get("initialStones"), moves[:AFFINITY_MOVES]]
        return hashlib.blake2b(json.dumps(basis, sort_keys=True, default=str).encode(),
                               digest_size=8).hexdigest()

    def _suspect(self, flight: Flight) -> bool:
        """Present at two member deaths: from now on it runs alone, so that a death can be
        blamed on it (and only on it) before it is quarantined."""
        return flight.deaths >= 2

    def _choose(self, flight: Flight, cost: float) -> Slot | None:
        ready = [s for s in self._slots() if s.available and s.index not in self._solo]
        if not ready:
            return None
        least = min(ready, key=self._load)
        if flight.kind != "analysis":
            return least
        key = self._affinity_key(flight)
        preferred = self._affinity.get(key)
        if preferred is not None:
            slot = self._slots()[preferred]
            # Same game, same member: its NN cache already holds these positions.
            if slot.available and slot.index not in self._solo \
                    and self._load(slot) <= self._load(least) * self.policy.affinity_slack + cost:
                return slot
        self._affinity[key] = least.index
        if len(self._affinity) > 100_000:
            self._affinity.clear()
        return least

    def _plan(self, flight: Flight, turns: list[int]) -> list[tuple[Slot, list[int]]] | None:
        """Which member gets which of ``turns``; None if no member can take them now."""
        if self._suspect(flight):
            idle = [s for s in self._slots() if s.available and not self.load_of(s.index).parts]
            return [(idle[0], turns)] if idle else None
        visits = flight.request.visits
        ready = sorted((s for s in self._slots() if s.available and s.index not in self._solo),
                       key=self._load)
        chunk = self.policy.split_min_turns
        if flight.kind == "analysis" and len(ready) > 1 and len(turns) >= 2 * chunk:
            # Many turns: split them over the least-loaded members, contiguous and even.
            count = min(len(ready), len(turns) // chunk)
            size = math.ceil(len(turns) / count)
            return [(ready[i], turns[i * size:(i + 1) * size]) for i in range(count)
                    if turns[i * size:(i + 1) * size]]
        slot = self._choose(flight, len(turns) * visits)
        return [(slot, turns)] if slot is not None else None

    def _dispatch(self, flight: Flight) -> None:
        turns = flight.unassigned() if flight.kind == "analysis" else (
            [] if flight.parts else [0])
        if not turns:
            return
        plan = self._plan(flight, turns)
        if plan is None:
            if flight not in self._waiting_set:
                self.waiting.append(flight)
                self._waiting_set.add(flight)
            if flight.waiting_since is None:
                flight.waiting_since = time.monotonic()
            return
        flight.waiting_since = None
        for slot, chunk in plan:
            self._send_part(flight, slot, chunk)

    def _send_part(self, flight: Flight, slot: Slot, turns: list[int]) -> None:
        flight.attempts += 1
        key = f"kp{flight.number}.{flight.attempts}"
        payload = dict(flight.request.raw)
        if flight.kind == "analysis":
            if set(turns) != flight.turns or flight.attempts > 1:
                payload = restrict_to_turns(payload, turns)
            self._add_heartbeat(flight, payload)
        payload["id"] = key
        part = Part(key, slot, set(turns) if flight.kind == "analysis" else {0},
                    float(flight.request.visits))
        flight.parts.append(part)
        self.by_key[key] = (flight, part)
        record = self.load_of(slot.index)
        record.load += part.cost
        record.parts += 1
        if self._suspect(flight):
            self._solo[slot.index] = flight
        slot.post(payload)

    def _add_heartbeat(self, flight: Flight, payload: dict[str, Any]) -> None:
        """Members report long searches at least every ``heartbeat_every`` seconds. A value the
        engine would refuse is left as the caller sent it, for the engine's own error."""
        heartbeat = self.policy.heartbeat_every
        if "reportDuringSearchEvery" not in payload:
            payload["reportDuringSearchEvery"] = heartbeat
        elif flight.partial_every != math.inf and flight.partial_every > heartbeat:
            # A divisor of the caller's interval, so its reports still land on time.
            payload["reportDuringSearchEvery"] = flight.partial_every / math.ceil(
                flight.partial_every / heartbeat)
        first = report_seconds(payload.get("firstReportDuringSearchAfter"))
        if first is not None and first > heartbeat:
            payload["firstReportDuringSearchAfter"] = heartbeat

    def _release_part(self, flight: Flight, part: Part) -> None:
        if self.by_key.pop(part.key, None) is None:
            return  # already released (a caller's delivery may have ended the flight)
        if part in flight.parts:
            flight.parts.remove(part)
        slot = part.slot
        record = self.load_of(slot.index)
        record.load = max(0.0, record.load - part.cost)
        part.open_turns = set()
        record.parts = max(0, record.parts - 1)
        if self._solo.get(slot.index) is flight:
            del self._solo[slot.index]
        if not record.parts:
            if self.waiting:
                asyncio.get_running_loop().call_soon(self._pump_waiting)
            self._schedule_rebalance()

    def _finish(self, flight: Flight) -> None:
        for part in list(flight.parts):
            if part.open_turns and part.slot.ready:
                # Still running elsewhere (a split query that failed): stop that work too.
                part.slot.post({"id": f"{part.key}-terminate", "action": "terminate",
                                "terminateId": part.key})
            self._release_part(flight, part)
        if flight in self._waiting_set:
            self._waiting_set.discard(flight)
            self.waiting.remove(flight)
        if flight in flight.session.flights:
            flight.session.flights.discard(flight)
            self.outstanding -= 1
            if not flight.session.flights:
                self._session_event(flight.session).set()
                if flight.session.closed:
                    self._session_idle.pop(flight.session.number, None)
            if self.outstanding == 0:
                self._idle.set()

    # --- rebalancing ------------------------------------------------------------------------

    def _schedule_rebalance(self) -> None:
        """Soon (not inside the caller's bookkeeping): idle members take queued work."""
        if self._rebalance_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a bare router in a test): nothing can run the work anyway
        self._rebalance_due = True
        loop.call_soon(self._rebalance)

    def _rebalance(self) -> None:
        """A member with nothing to do takes turns still queued on the busiest member.

        Work is sent to a member as soon as it arrives (KataGo queues it), so without this a
        member that became ready late — the second one at start, a replacement after a crash
        or a reload — would idle while its peer works through a backlog alone. The moved
        turns are terminated on the busy member (KataGo drops a queued turn at once, with a
        `noResults` line that goes nowhere, like every late line of a turn the part no longer
        owns) and sent to the idle one as a new part."""
        self._rebalance_due = False
        if self.waiting:
            self._pump_waiting()  # a query no member could take goes first
        for idle in self._slots():
            if idle.available and idle.index not in self._solo \
                    and not self.load_of(idle.index).parts:
                self._take_queued_work(idle)

    def _take_queued_work(self, idle: Slot) -> None:
        donors = [s for s in self._slots() if s is not idle and s.ready
                  and s.index not in self._solo and self.load_of(s.index).parts]
        if not donors:
            return
        donor = max(donors, key=lambda s: self.load_of(s.index).load)
        # The donor's turns in the order it got them (parts in sending order, turns in the
        # order KataGo queues them); its oldest turn is the likeliest to be searching: it stays.
        candidates = [(flight, part, turn)
                      for flight, part in self.by_key.values() if part.slot is donor
                      for turn in sorted(part.open_turns)][1:]
        donor_load = self.load_of(donor.index)
        gap = donor_load.load - self.load_of(idle.index).load
        moves: dict[str, tuple[Flight, Part, list[int]]] = {}
        for flight, part, turn in reversed(candidates):  # newest first: they wait longest
            cost = part.cost_per_turn
            if flight.kind != "analysis" or self._suspect(flight) or turn in part.started \
                    or turn in flight.terminated or not 0 < cost < gap:
                continue
            gap -= 2 * cost  # moving it narrows the gap between the two
            moves.setdefault(part.key, (flight, part, []))[2].append(turn)
        for flight, part, turns in moves.values():
            turns.sort()
            donor.post({"id": f"{part.key}-moved", "action": "terminate",
                        "terminateId": part.key, "turnNumbers": turns})
            part.open_turns -= set(turns)
            donor_load.load = max(0.0, donor_load.load - len(turns) * part.cost_per_turn)
            if not part.open_turns:
                self._release_part(flight, part)
            self.stats["rebalanced_turns"] += len(turns)
            self._send_part(flight, idle, turns)

    # --- member callbacks ------------------------------------------------------------------

    def on_message(self, slot: Slot, msg: dict[str, Any]) -> None:
        key = msg.get("id")
        if isinstance(key, str) and key in self._clears:
            self._clear_acked(key, slot.index)
            return
        entry = self.by_key.get(key) if isinstance(key, str) else None
        if entry is None:
            return  # an acknowledgement of katapool's own terminate, or a stale line
        flight, part = entry
        msg["id"] = flight.client_id
        deliver = flight.session.deliver
        if flight.kind == "action" or "error" in msg:
            deliver(msg)  # for a split query, its first error ends it (the rest are alike)
            self._release_part(flight, part)  # this member is done with it: no terminate
            self._finish(flight)
            return
        turn = msg.get("turnNumber")
        if isinstance(turn, int) and turn not in part.open_turns:
            # A turn this part no longer owns: answered already, or moved to another member
            # (rebalanced): its late lines go nowhere.
            if is_final(msg):
                self.stats["duplicates_dropped"] += 1
            return
        if not isinstance(turn, int):
            # Each warning about the query comes once, not once per part it was split into.
            seen = json.dumps({k: v for k, v in msg.items() if k != "id"}, sort_keys=True)
            if seen not in flight.warnings_seen:
                flight.warnings_seen.add(seen)
                deliver(msg)
            return
        if is_final(msg):
            if turn in flight.finals or turn not in flight.turns:
                self.stats["duplicates_dropped"] += 1
                return
            flight.finals.add(turn)
            record = self.load_of(slot.index)
            if turn in part.open_turns:
                part.open_turns.discard(turn)
                record.load = max(0.0, record.load - part.cost_per_turn)
            root = msg.get("rootInfo")
            if isinstance(root, dict) and isinstance(root.get("visits"), int):
                record.visits_done += root["visits"]
            deliver(msg)
            if not part.open_turns:
                record.latencies.append(time.monotonic() - part.sent)
                self._release_part(flight, part)
            if flight.finals >= flight.turns:
                self._finish(flight)
            return
        part.started.add(turn)  # searching now: not worth moving to another member
        if not flight.wants_partials:
            return  # a heartbeat katapool asked for, not the caller
        visits = msg.get("rootInfo", {}).get("visits", 0)
        if turn in flight.finals or visits <= flight.delivered_visits.get(turn, -1):
            return  # a re-run turn's partial results start over: only newer ones go out
        now = time.monotonic()
        last = flight.last_partial.get(turn)
        if last is not None and now - last < 0.9 * flight.partial_every:
            return  # heartbeats come faster than the caller asked for
        if flight.first_partial_after and now - flight.created < 0.9 * flight.first_partial_after:
            return
        flight.last_partial[turn] = now
        flight.delivered_visits[turn] = visits
        deliver(msg)

    def oldest_ages(self) -> tuple[float | None, float | None]:
        """Seconds since the oldest waiting query and the oldest unfinished one came in."""
        now = time.monotonic()
        flights = {f for f, _ in self.by_key.values()} | self._waiting_set
        waiting = min((f.created for f in self._waiting_set), default=None)
        oldest = min((f.created for f in flights), default=None)
        return (None if waiting is None else now - waiting,
                None if oldest is None else now - oldest)

    def parts_on(self, slot: Slot) -> int:
        return self.load_of(slot.index).parts

    def on_ready(self, slot: Slot) -> None:
        self._failed_reason = None
        self._pump_waiting()
        self._schedule_rebalance()

    def _pump_waiting(self) -> None:
        waiting, self.waiting = self.waiting, deque()
        self._waiting_set = set()
        for flight in waiting:
            if flight in flight.session.flights:
                self._dispatch(flight)

    def on_lost(self, slot: Slot, reason: str) -> None:
        solo = self._solo.get(slot.index)
        for key in [k for k, (_, _, pending) in self._clears.items() if slot.index in pending]:
            self._clear_acked(key, slot.index)
        hit: dict[Flight, list[Part]] = {}
        for flight, part in list(self.by_key.values()):
            if part.slot is slot:
                hit.setdefault(flight, []).append(part)
        for flight, parts in hit.items():
            self.stats["rerouted_turns"] += sum(len(p.open_turns) for p in parts)
            for part in parts:
                self._release_part(flight, part)
            self.stats["rerouted"] += 1
            if reason != PLANNED_STOP:  # a reload is not a crash: nobody is to blame
                flight.deaths += 1
            # Only a death while it ran alone proves a query guilty.
            if reason != PLANNED_STOP and flight is solo \
                    and flight.deaths >= self.policy.quarantine_after:
                self.stats["quarantined"] += 1
                flight.session.deliver(error_response(
                    f"query quarantined: {flight.deaths} engine members died while analysing it "
                    f"(last: {reason})", flight.client_id))
                self._finish(flight)
                continue
            self._settle_terminated(flight)
            if flight.kind == "analysis" and flight.finals >= flight.turns:
                self._finish(flight)
            else:
                self._dispatch(flight)

    def on_failed(self, slot: Slot, reason: str) -> None:
        if all(s.state is SlotState.FAILED for s in self._slots()):
            self._failed_reason = reason
            waiting, self.waiting = self.waiting, deque()
            self._waiting_set = set()
            for flight in waiting:
                flight.session.deliver(error_response(f"no engine available: {reason}",
                                                      flight.client_id))
                self._finish(flight)

    # --- terminate and other actions ---------------------------------------------------------

    def _settle_terminated(self, flight: Flight) -> None:
        """Terminated turns that nobody is analysing any more end with ``noResults``."""
        for turn in sorted(flight.terminated & set(flight.unassigned())):
            flight.finals.add(turn)
            flight.session.deliver({"id": flight.client_id, "isDuringSearch": False,
                                    "noResults": True, "turnNumber": turn})

    def _terminate(self, flight: Flight, turns: list[int] | None) -> None:
        wanted = set(turns) if turns is not None else set(flight.turns)
        flight.terminated |= wanted & flight.turns
        for part in flight.parts:
            msg: dict[str, Any] = {"id": f"{part.key}-terminate", "action": "terminate",
                                   "terminateId": part.key}
            if turns is not None:
                listed = sorted(wanted & part.open_turns)
                if not listed:
                    continue
                msg["turnNumbers"] = listed
            part.slot.post(msg)
        self._settle_terminated(flight)  # turns not sent anywhere yet: answered here
        if flight.finals >= flight.turns:
            self._finish(flight)

    def _action(self, session: Session, request: Request) -> None:
        raw = request.raw
        action = request.action
        if action == "query_version":
            session.deliver({**raw, "version": self.version, "git_hash": self.git_hash})
        elif action in ("terminate", "terminate_all"):
            self.terminate_for(session, raw["terminateId"] if action == "terminate" else None,
                               request.turn_numbers)
            session.deliver(dict(raw))
        elif action == "clear_cache":
            ready = [s for s in self._slots() if s.ready]
            if not ready:
                session.deliver(dict(raw))
                return
            key = f"kp-clear-{next(self._numbers)}"
            self._clears[key] = (session, dict(raw), {s.index for s in ready})
            self.outstanding += 1  # the acknowledgement is owed: end of input waits for it
            self._idle.clear()
            for slot in ready:
                slot.post({"id": key, "action": "clear_cache"})
        elif action == "query_models":
            flight = Flight(next(self._numbers), session, request, {0}, kind="action")
            self._accept(flight)
            self._dispatch(flight)

    def terminate_for(self, session: Session, terminate_id: str | None,
                      turns: list[int] | None) -> None:
        for flight in list(session.flights):
            if flight.kind != "analysis":
                continue
            if terminate_id is not None and flight.client_id != terminate_id:
                continue
            self._terminate(flight, turns)

    def _clear_acked(self, key: str, slot_index: int) -> None:
        session, raw, pending = self._clears[key]
        pending.discard(slot_index)
        if not pending:
            del self._clears[key]
            session.deliver(raw)
            self.outstanding -= 1
            if self.outstanding == 0:
                self._idle.set()

    # --- deadlines ---------------------------------------------------------------------------

    async def watch_deadlines(self, interval: float = 1.0) -> None:
        """Terminate queries overdue past their deadline; a member that still does not answer
        after ``terminate_grace`` is stuck and gets replaced. Actions get a short deadline."""
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            self._expire_waiting(now)
            flights = {flight for flight, _ in self.by_key.values()}
            for flight in flights:
                if flight.kind == "action":
                    if now - flight.created > self.policy.responsive_deadline * 3:
                        flight.session.deliver(error_response(
                            f"{flight.request.action} got no answer from the engine",
                            flight.client_id))
                        self._finish(flight)
                    continue
                if flight.overdue_at is None and flight.deadline is not None \
                        and now > flight.deadline:
                    log.warning("query %s overdue after %.0f s: terminating it",
                                flight.client_id, now - flight.created)
                    flight.overdue_at = now
                    self._terminate(flight, None)
                elif flight.overdue_at is not None and self.supervisor is not None \
                        and now - flight.overdue_at > self.policy.terminate_grace:
                    for part in list(flight.parts):
                        self.supervisor.mark_unhealthy(
                            part.slot, f"stuck: query {flight.client_id} still unanswered "
                                       f"{self.policy.terminate_grace:g} s after terminate")

    def _expire_waiting(self, now: float) -> None:
        """Queries no member has taken (all starting, restarting or busy with a suspect) end
        with an error once past their deadline or ``queue_timeout``: never a silent wait."""
        limit = self.policy.queue_timeout
        for flight in list(self.waiting):
            if flight.waiting_since is None:
                continue
            if flight.deadline is not None and now > flight.deadline and not flight.parts:
                why = f"its deadline passed after {now - flight.created:.0f} s"
            elif limit is not None and now - flight.waiting_since > limit:
                why = f"no engine member could take it within {limit:g} s"
            else:
                continue
            states = ", ".join(f"{s.name} {s.state.value}" for s in self._slots())
            log.warning("query %s expired while queued: %s (%s)", flight.client_id, why, states)
            flight.session.deliver(error_response(
                f"query not started: {why} (members: {states})", flight.client_id))
            self._finish(flight)
