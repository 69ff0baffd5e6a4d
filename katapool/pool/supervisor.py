"""Start, watch and restart pool members.

Each member slot runs one lifecycle task: (backoff) → start (one slot at a time, so several
members never build TensorRT engines at once) → serve until the member dies or fails a health
check → report the loss → restart, unless its crash budget is spent or the cause is one a
restart cannot fix: a known one, or an engine that quit before it was ever ready with the same
words twice in a row. Health has three levels: *alive* (the process), *responsive*
(``query_version`` answered) and *functional* (a 1-visit canary analysed, the only check that
proves the network and search threads work).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from katapool.config.policy import PoolPolicy
from katapool.errors import EngineTerminatedError
from katapool.pool.member import Member, MemberStartError

log = logging.getLogger(__name__)

HEALTH_PREFIX = "katapool-health-"
MemberFactory = Callable[[int, int], Member]  # (slot index, generation) -> a fresh member
PLANNED_STOP = "replaced (reload)"  # the loss reason of a member stopped on purpose
# A member that stops reading its input must not make katapool hold its queries without end:
# past either bound it is restarted (its work goes to the other members).
OUTBOX_MAX_MESSAGES = 100_000
INPUT_BACKLOG_MAX_BYTES = 64 << 20
RESTART_CAUSES = ("died", "unresponsive", "not functional", "stuck", "backlog")
LOCAL_NODE = "local"  # the node of a member that names none
# KataGo's log-line time stamp: two start failures differing only by it are the same failure.
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)?(?:[+-]\d{4})?:? ?")


def restart_cause(reason: str) -> str:
    """The kind of a loss reason ("died: exit 1" -> "died"), for counting restarts by cause."""
    kind = reason.split(":", 1)[0].strip()
    return kind.replace(" ", "_") if kind in RESTART_CAUSES else "other"


class InternalFault(str):
    """A loss reason that is katapool's own fault (an exception in a reader or writer)."""


class SlotState(StrEnum):
    WAITING = "waiting"  # for its resources (a free GPU on a cluster): not a failure
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class SlotListener(Protocol):
    def on_ready(self, slot: Slot) -> None: ...
    def on_lost(self, slot: Slot, reason: str) -> None: ...
    def on_failed(self, slot: Slot, reason: str) -> None: ...
    def on_message(self, slot: Slot, message: dict[str, Any]) -> None: ...


class Slot:
    """One place in the pool; its member is replaced on every restart."""

    def __init__(self, index: int, factory: MemberFactory) -> None:
        self.index = index
        self.factory = factory
        self.name = f"member-{index}"
        self.state = SlotState.STARTING
        self.member: Member | None = None
        self.generation = 0
        self.deaths: deque[float] = deque()
        self.last_cause: str | None = None
        self.ready_since: float | None = None
        self.ever_ready = False  # a member from its current factory has been ready
        self.last_start_failure: str | None = None  # while never ready: how the last start failed
        self.last_analysis_output = 0.0
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.unhealthy: asyncio.Event = asyncio.Event()
        self.unhealthy_reason = ""
        self.restarts = 0
        self.reloads = 0
        self.draining = False  # being replaced: finishes its work, gets no new work
        self.replace: asyncio.Event = asyncio.Event()
        self.label = ""  # its device, for status displays
        self.last_node = LOCAL_NODE  # where its latest member ran (one gone says nothing)
        self.restart_causes: dict[str, int] = {}
        self.past_garbage_lines = 0  # unreadable lines from this slot's earlier members
        self.outbox_max = OUTBOX_MAX_MESSAGES
        self.input_backlog_max = INPUT_BACKLOG_MAX_BYTES

    @property
    def ready(self) -> bool:
        return self.state is SlotState.READY

    @property
    def available(self) -> bool:
        """Ready for new work."""
        return self.state is SlotState.READY and not self.draining

    def post(self, message: dict[str, Any]) -> None:
        """Send a message to the current member, in order; dropped if it dies first.
        Members that can write without waiting (local pipes) get it at once."""
        send_now = getattr(self.member, "send_nowait", None)
        if send_now is not None and self.outbox.empty() and self.state is SlotState.READY:
            send_now(message)
        else:
            self.outbox.put_nowait(message)
        self._check_backlog()

    def _check_backlog(self) -> None:
        backlog = getattr(self.member, "input_backlog", None)
        queued = backlog() if backlog is not None else 0
        if (self.outbox.qsize() > self.outbox_max or queued > self.input_backlog_max) \
                and self.ready and not self.unhealthy.is_set():
            self.unhealthy_reason = (f"backlog: it reads no input ({self.outbox.qsize()} "
                                     f"messages and {queued} bytes waiting)")
            self.unhealthy.set()

    @property
    def garbage_lines(self) -> int:
        """Engine output lines that were not JSON objects (or were too long), all generations."""
        return self.past_garbage_lines + int(getattr(self.member, "garbage_lines", 0))

    @property
    def node(self) -> str:
        """Where its member runs: the member's optional ``node``, else where the last one ran."""
        node = getattr(self.member, "node", None)
        return str(node) if node else self.last_node


class Supervisor:
    def __init__(self, factories: list[MemberFactory], policy: PoolPolicy,
                 listener: SlotListener) -> None:
        self.policy = policy
        self.listener = listener
        self.slots = [Slot(i, f) for i, f in enumerate(factories)]
        self._start_locks: dict[str, asyncio.Lock] = {}  # one start at a time per machine
        self._tasks: list[asyncio.Task[None]] = []
        self._probes: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._probe_ids = itertools.count(1)
        self._closing = False
        self._faults: dict[int, deque[float]] = {}  # katapool's own faults, per slot
        self.changed = asyncio.Condition()

    def factories(self) -> list[MemberFactory]:
        return [s.factory for s in self.slots]

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._lifecycle(s), name=s.name) for s in self.slots]

    async def wait_until_any_ready(self) -> bool:
        """True once a member is ready; False if every member has failed."""
        async with self.changed:
            await self.changed.wait_for(
                lambda: any(s.ready for s in self.slots)
                or all(s.state is SlotState.FAILED for s in self.slots))
        return any(s.ready for s in self.slots)

    async def wait_until_all_settled(self) -> None:
        """Until no member is starting (each is ready or has failed)."""
        async with self.changed:
            await self.changed.wait_for(lambda: all(
                s.state in (SlotState.READY, SlotState.FAILED, SlotState.WAITING)
                for s in self.slots))

    def mark_unhealthy(self, slot: Slot, reason: str) -> None:
        if slot.ready and not slot.unhealthy.is_set():
            slot.unhealthy_reason = reason
            slot.unhealthy.set()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _backoff(self, slot: Slot) -> float:
        recent = len(slot.deaths)
        if recent == 0:
            return 0.0
        return float(min(self.policy.backoff_max, self.policy.backoff_initial * 2 ** (recent - 1)))

    def _fault_backoff(self, slot: Slot) -> float:
        """Delay before restarting after katapool's own fault: growing like the crash
        backoff with the faults seen within ``crash_window``, but never failing the slot."""
        now = time.monotonic()
        faults = self._faults.setdefault(slot.index, deque())
        faults.append(now)
        while faults and now - faults[0] > self.policy.crash_window:
            faults.popleft()
        if len(faults) < 2:
            return 0.0
        return float(min(self.policy.backoff_max,
                         self.policy.backoff_initial * 2 ** (len(faults) - 2)))

    @staticmethod
    def _fails_the_same_way(slot: Slot, exc: MemberStartError) -> bool:
        """True when the engine quit before it was ready with the same words as at the slot's
        previous start, and no member of this slot was ever ready: its setup is at fault (a
        value KataGo refuses, a network it cannot load), which more restarts only delay.
        Spawn failures and start timeouts may pass, and a member once ready keeps its whole
        crash budget."""
        if slot.ever_ready or not exc.exited:
            slot.last_start_failure = None
            return False
        said = _TIMESTAMP.sub("", exc.cause)
        repeated = said == slot.last_start_failure
        slot.last_start_failure = said
        return repeated

    def _record_death(self, slot: Slot, cause: str) -> bool:
        """Count a death; True if the slot may restart."""
        now = time.monotonic()
        if slot.ready_since is not None and now - slot.ready_since > self.policy.backoff_reset_after:
            slot.deaths.clear()  # it ran well for a while: start the backoff over
        slot.deaths.append(now)
        while slot.deaths and now - slot.deaths[0] > self.policy.crash_window:
            slot.deaths.popleft()
        slot.last_cause = cause
        return len(slot.deaths) <= self.policy.crash_budget

    async def _fail(self, slot: Slot, reason: str) -> None:
        slot.state = SlotState.FAILED
        slot.draining = False
        slot.replace.clear()
        slot.last_cause = reason
        log.error("%s failed for good: %s", slot.name, reason)
        self._tell(self.listener.on_failed, slot, reason)
        await self._notify()

    @staticmethod
    def _tell(callback: Callable[..., None], *args: Any) -> None:
        """A listener's bug must not end a slot's lifecycle (and strand its queries)."""
        try:
            callback(*args)
        except Exception:
            log.exception("pool listener %s failed", getattr(callback, "__name__", callback))

    async def _lifecycle(self, slot: Slot) -> None:
        while not self._closing:
            delay = self._backoff(slot)
            if delay:
                slot.state = SlotState.RESTARTING
                await asyncio.sleep(delay)
            slot.generation += 1
            member = slot.factory(slot.index, slot.generation)
            slot.state = SlotState.STARTING
            slot.member = member  # so that close() can stop it even while it starts
            await self._notify()
            try:
                place = getattr(member, "place", None)
                if place is not None:  # a cluster member waits for a node with room first
                    slot.state = SlotState.WAITING
                    await self._notify()
                    await place()
                    slot.state = SlotState.STARTING
                    await self._notify()
                lock = self._start_locks.setdefault(str(getattr(member, "machine", "") or "local"),
                                                    asyncio.Lock())
                async with lock:
                    if self._closing:
                        return
                    await member.start()
            except MemberStartError as exc:
                slot.member = None
                repeated = self._fails_the_same_way(slot, exc)
                if exc.permanent or repeated:  # queries waiting for it hear so before the cleanup
                    await self._fail(slot, exc.cause if exc.permanent
                                     else f"failed to start twice the same way: {exc.cause}")
                    with contextlib.suppress(Exception):
                        await member.kill()
                    return
                with contextlib.suppress(Exception):
                    await member.kill()
                if not self._record_death(slot, exc.cause):
                    await self._fail(slot, f"failed to start {len(slot.deaths)} times within "
                                           f"{self.policy.crash_window:.0f} s; last: {exc.cause}")
                    return
                continue
            except Exception as exc:  # a bug or an OS failure outside the engine: report it
                slot.member = None
                log.error("%s could not start", slot.name, exc_info=exc)
                await self._fail(slot, f"could not start: {exc.__class__.__name__}: {exc}")
                with contextlib.suppress(Exception):
                    await member.kill()
                return
            slot.state = SlotState.READY
            slot.ever_ready = True
            slot.last_node = slot.node
            slot.draining = False
            slot.replace.clear()
            slot.ready_since = time.monotonic()
            slot.last_analysis_output = time.monotonic()
            slot.unhealthy.clear()
            slot.outbox = asyncio.Queue()
            log.info("%s ready (generation %d)", slot.name, slot.generation)
            self._tell(self.listener.on_ready, slot)
            await self._notify()
            reason = await self._serve(slot, member)
            if self._closing:
                return
            # Its queries move to the other members first; stopping it (a stuck process may
            # take many seconds to die) comes after, but before its successor starts, so
            # that two engines never hold one device's memory at once.
            if reason == "replaced":
                # A planned replacement (reload): a clean stop, not a crash; anything it
                # still held goes to the other members.
                slot.state = SlotState.STARTING
                slot.reloads += 1
                self._tell(self.listener.on_lost, slot, PLANNED_STOP)
                with contextlib.suppress(Exception):
                    await member.stop(self.policy.stop_grace)
                slot.past_garbage_lines = slot.garbage_lines
                slot.member = None
                await self._notify()
                continue
            slot.state = SlotState.RESTARTING
            slot.restarts += 1
            if isinstance(reason, InternalFault):
                # katapool's own bug, not the engine's: restart the member (its pipes may be
                # mid-line) but spend none of its crash budget on it.
                log.warning("%s lost: %s", slot.name, reason)
                self._tell(self.listener.on_lost, slot, str(reason))
                with contextlib.suppress(Exception):
                    await member.kill()
                slot.last_cause = str(reason)
                slot.member = None
                await self._notify()
                await asyncio.sleep(self._fault_backoff(slot))  # a bug that recurs: no spinning
                continue
            if reason is None:
                reason = f"died: {member.describe_failure()}"
            log.warning("%s lost: %s", slot.name, reason)
            cause = restart_cause(reason)
            slot.restart_causes[cause] = slot.restart_causes.get(cause, 0) + 1
            self._tell(self.listener.on_lost, slot, reason)
            with contextlib.suppress(Exception):
                await member.kill()
            slot.past_garbage_lines = slot.garbage_lines
            slot.member = None
            await self._notify()
            if not self._record_death(slot, reason):
                await self._fail(slot, f"crashed {len(slot.deaths)} times within "
                                       f"{self.policy.crash_window:.0f} s; last: {reason}")
                return

    async def _serve(self, slot: Slot, member: Member) -> str | InternalFault | None:
        """Run the member until it is gone; the reason, or None if it simply died."""
        tasks = {
            asyncio.create_task(self._read(slot, member)): "reader",
            asyncio.create_task(self._write(slot, member)): "writer",
            asyncio.create_task(self._alive(member)): "alive",
            asyncio.create_task(self._responsive(slot, member)): "responsive",
            asyncio.create_task(self._functional(slot, member)): "functional",
            asyncio.create_task(slot.unhealthy.wait()): "unhealthy",
            asyncio.create_task(slot.replace.wait()): "replace",
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            slot.state = SlotState.RESTARTING  # no new work for it from here on
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finished = next(iter(done))
        kind = tasks[finished]
        if kind == "unhealthy":
            return slot.unhealthy_reason
        if kind == "replace":
            return "replaced"
        if finished.cancelled():
            return None
        exc = finished.exception()
        if exc is not None:
            if isinstance(exc, EngineTerminatedError):
                return None
            log.error("%s: katapool's own fault in its %s task (a bug in katapool, not an "
                      "engine failure)", slot.name, kind, exc_info=exc)
            return InternalFault(f"katapool internal error in the {kind}: "
                                 f"{exc.__class__.__name__}: {exc}")
        result = finished.result()
        return result if isinstance(result, str) else None

    async def _read(self, slot: Slot, member: Member) -> None:
        while True:
            msg = await member.receive()
            if msg is None:
                return
            rid = msg.get("id")
            if isinstance(rid, str) and rid.startswith(HEALTH_PREFIX):
                if "turnNumber" in msg:
                    slot.last_analysis_output = time.monotonic()
                fut = self._probes.pop(rid, None)
                if fut is not None and not fut.done() and (
                        "turnNumber" not in msg or msg.get("isDuringSearch") is False):
                    fut.set_result(msg)
                elif fut is not None and not fut.done():
                    self._probes[rid] = fut  # a partial canary result: keep waiting
                continue
            if "turnNumber" in msg:
                slot.last_analysis_output = time.monotonic()
            self._tell(self.listener.on_message, slot, msg)

    async def _write(self, slot: Slot, member: Member) -> None:
        outbox = slot.outbox
        while True:
            msg = await outbox.get()
            try:
                await member.send(msg)
            except EngineTerminatedError:
                return

    async def _alive(self, member: Member) -> str:
        while member.alive:
            await asyncio.sleep(self.policy.alive_interval)
        return f"died: {member.describe_failure()}"

    async def _probe(self, slot: Slot, message: dict[str, Any], deadline: float) -> bool:
        rid = f"{HEALTH_PREFIX}{slot.index}-{next(self._probe_ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._probes[rid] = fut
        slot.post({**message, "id": rid})
        try:
            await asyncio.wait_for(fut, deadline)
            return True
        except TimeoutError:
            return False
        finally:
            self._probes.pop(rid, None)

    async def _responsive(self, slot: Slot, member: Member) -> str:
        while True:
            await asyncio.sleep(self.policy.responsive_interval)
            if not await self._probe(slot, {"action": "query_version"},
                                     self.policy.responsive_deadline):
                return (f"unresponsive: query_version not answered within "
                        f"{self.policy.responsive_deadline:g} s")

    async def _functional(self, slot: Slot, member: Member) -> str:
        size = self.policy.canary_board_size
        canary = {"moves": [], "rules": "tromp-taylor", "komi": 7.5, "boardXSize": size,
                  "boardYSize": size, "maxVisits": 1, "priority": 1 << 61}
        while True:
            await asyncio.sleep(self.policy.functional_interval)
            sent = time.monotonic()
            if await self._probe(slot, canary, self.policy.functional_deadline):
                continue
            # A canary queued behind long searches is fine while analysis keeps coming out.
            if slot.last_analysis_output < sent:
                return (f"not functional: a 1-visit canary got no answer and no analysis came "
                        f"out within {self.policy.functional_deadline:g} s")

    async def replace(self, slot: Slot, factory: MemberFactory, in_flight: Callable[[], int],
                      drain_timeout: float) -> bool:
        """Replace ``slot``'s member with one from ``factory`` (a new model or config): it
        takes no new work, finishes what it has (up to ``drain_timeout``; the rest moves to
        other members), stops cleanly and restarts. True once the new member is ready."""
        async with self.changed:  # a member still starting finishes first, then is replaced
            await self.changed.wait_for(lambda: slot.state in (SlotState.READY, SlotState.FAILED)
                                        or self._closing)
        slot.factory = factory
        slot.ever_ready, slot.last_start_failure = False, None  # a new setup, untried
        if slot.state is SlotState.FAILED:
            slot.deaths.clear()
            slot.state = SlotState.STARTING
            self._tasks.append(asyncio.create_task(self._lifecycle(slot), name=slot.name))
        elif slot.ready:
            slot.draining = True
            await self._notify()
            deadline = time.monotonic() + drain_timeout
            while in_flight() and slot.ready and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            slot.replace.set()
        async with self.changed:
            await self.changed.wait_for(lambda: (slot.ready and not slot.replace.is_set())
                                        or slot.state is SlotState.FAILED or self._closing)
        return slot.ready

    async def close(self, grace: float) -> None:
        self._closing = True
        await self._notify()  # waiters (a reload in progress) see the pool closing
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        members = [s.member for s in self.slots if s.member is not None]
        await asyncio.gather(*(m.stop(grace) for m in members), return_exceptions=True)
        for slot in self.slots:
            if slot.state is not SlotState.FAILED:  # keep the verdict for status reports
                slot.state = SlotState.STOPPED
            slot.member = None
