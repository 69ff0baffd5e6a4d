"""The pool facade: members + supervisor + router, as one async context manager."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from katapool.config.policy import PoolPolicy
from katapool.engine.probe import binary_stamp
from katapool.errors import EngineStartError
from katapool.pool.member import Member
from katapool.pool.router import Deliver, Router, Session
from katapool.pool.supervisor import MemberFactory, Supervisor
from katapool.pool.view import MemberSnapshot, PoolCounters, member_snapshot, pool_counters

if TYPE_CHECKING:
    from katapool.pool.launch import Launched


def _unprepared(index: int, generation: int) -> Member:
    raise RuntimeError("an embedded pool's members are built when it starts")


class Pool:
    """A pool of analysis engines behind one router.

    >>> # async with Pool(factories, PoolPolicy(), version="1.18.1") as pool:
    >>> #     session = pool.session(print); session.submit(line); await pool.drain()
    """

    def __init__(self, factories: list[MemberFactory], policy: PoolPolicy | None = None,
                 version: str = "", git_hash: str | None = None,
                 labels: list[str] | None = None) -> None:
        if not factories:
            raise ValueError("a pool needs at least one member")
        self.policy = policy or PoolPolicy()
        self.router = Router(self.policy, version, git_hash)
        self.supervisor = Supervisor(factories, self.policy, self.router)
        self.router.supervisor = self.supervisor
        for slot, label in zip(self.supervisor.slots, labels or [], strict=False):
            slot.label = label
        self._deadline_task: asyncio.Task[None] | None = None
        self._cleanup: list[Callable[[], None]] = []
        self._prepare: Callable[[], Launched] | None = None
        self._sources: dict[Path, tuple[str, int, int] | None] = {}

    @classmethod
    def embedded(cls, model: str | Path | None = None, *, members: int = 1,
                 gpus: list[int] | None = None, preset: str = "desktop",
                 katago: str | Path | None = None, human_model: str | Path | None = None,
                 policy: PoolPolicy | None = None, batch: bool = False) -> Pool:
        """A pool inside the caller's process, on the installed engine (or ``katago``) and
        the given network (default: the engine's bundled one), configs generated per device
        (``batch``: threads spread over positions, for reviewing many positions at few visits).
        Use it with ``async with`` (or hand it to :class:`katapool.client.AsyncClient`)."""
        from katapool.pool.launch import launch_from_options, member_count

        # Finding the engine and devices runs processes (seconds): it happens in a worker
        # thread when the pool starts, so that building one inside asyncio code blocks nothing.
        pool = cls([_unprepared] * member_count(members, gpus), policy)
        pool._prepare = functools.partial(
            launch_from_options, model=model, members=members, gpus=gpus, preset=preset,
            katago=katago, human_model=human_model,
            start_timeout=(policy or PoolPolicy()).start_timeout, batch=batch)
        return pool

    async def _prepared(self) -> None:
        if self._prepare is None:
            return
        launched = await asyncio.to_thread(self._prepare)
        self._prepare = None
        self.router.version = launched.info.version
        self.router.git_hash = launched.info.git_revision or ""
        for slot, factory, label in zip(self.supervisor.slots, launched.factories,
                                        launched.labels, strict=True):
            slot.factory, slot.label = factory, label
        self.on_close(launched.cleanup)
        self.record_sources(launched.sources)

    def record_sources(self, paths: list[Path]) -> None:
        """Remember the files the members run from (engine, networks, configs) as they are
        now, for :meth:`sources_changed`."""
        self._sources = {p: binary_stamp(p) for p in paths}

    def sources_changed(self) -> bool:
        """Whether a file the members run from was replaced or edited since (blocking: it
        reads the file system)."""
        return any(binary_stamp(p) != stamp for p, stamp in self._sources.items())

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` (e.g. removing generated config files) when the pool closes."""
        self._cleanup.append(cleanup)

    @property
    def version(self) -> str:
        """The engine's version, as ``query_version`` answers it."""
        return self.router.version

    @property
    def size(self) -> int:
        """How many members the pool has (each in one slot, whatever its state)."""
        return len(self.supervisor.slots)

    def factories(self) -> list[MemberFactory]:
        """What builds each member now (for a :meth:`reload` of another pool to them)."""
        return self.supervisor.factories()

    def adopt(self, other: Pool) -> None:
        """After a reload to ``other``'s factories: drop this pool's old files, keep its (and
        what it knows of its engine, source files and members' devices)."""
        for cleanup in self._cleanup:
            cleanup()
        self._cleanup, other._cleanup = other._cleanup, []
        self._sources = dict(other._sources)
        self.router.version, self.router.git_hash = other.router.version, other.router.git_hash
        for slot, theirs in zip(self.supervisor.slots, other.supervisor.slots, strict=True):
            slot.label = theirs.label

    async def reload(self, factories: list[MemberFactory], drain_timeout: float | None = None) -> bool:
        """Rolling restart: members are replaced one at a time from ``factories`` (a new model
        or config), each finishing its work first, so no query is lost and the others keep
        serving. If a new member cannot start, every member goes back to its old factory and
        False is returned."""
        if len(factories) != len(self.supervisor.slots):
            raise ValueError("a rolling reload keeps the number of members")
        if drain_timeout is None:
            drain_timeout = self.policy.reload_drain
        old = self.supervisor.factories()
        done: list[int] = []
        for slot, factory in zip(self.supervisor.slots, factories, strict=True):
            if await self.supervisor.replace(
                    slot, factory, functools.partial(self.router.parts_on, slot), drain_timeout):
                done.append(slot.index)
                continue
            for index in [*done, slot.index]:  # back to what worked
                back = self.supervisor.slots[index]
                await self.supervisor.replace(back, old[index],
                                              functools.partial(self.router.parts_on, back),
                                              drain_timeout)
            return False
        return True

    async def start(self, wait: str = "any") -> None:
        """Start every member; return when one is ready (``wait="any"``), when all have
        settled (``"all"``), or at once (``"none"``)."""
        try:
            await self._start(wait)
        except BaseException:  # no member could start, or Ctrl-C: no engine is left running
            await self.close()
            raise

    async def _start(self, wait: str) -> None:
        await self._prepared()
        await self.supervisor.start()
        self._deadline_task = asyncio.create_task(self.router.watch_deadlines())
        if wait == "any" and not await self.supervisor.wait_until_any_ready():
            causes = "; ".join(f"{s.name}: {s.last_cause}" for s in self.supervisor.slots)
            raise EngineStartError(f"no pool member could start ({causes})")
        if wait == "all":
            await self.supervisor.wait_until_all_settled()
            if not any(s.ready for s in self.supervisor.slots):
                causes = "; ".join(f"{s.name}: {s.last_cause}" for s in self.supervisor.slots)
                raise EngineStartError(f"no pool member could start ({causes})")

    def session(self, deliver: Deliver) -> Session:
        return Session(self.router, deliver)

    async def drain(self) -> None:
        await self.router.wait_idle()

    def members(self) -> list[MemberSnapshot]:
        """Every member as it is now, in slot order."""
        return [member_snapshot(slot, self.router.load_of(slot.index))
                for slot in self.supervisor.slots]

    def counters(self) -> PoolCounters:
        """The router's pool-wide numbers (queue, oldest queries, re-routes, …)."""
        return pool_counters(self.router)

    @property
    def outstanding(self) -> int:
        """Queries accepted and not yet finished (cheap: for checks on every query)."""
        return self.router.outstanding

    def status(self) -> list[dict[str, Any]]:
        return [member.status() for member in self.members()]

    async def close(self) -> None:
        if self._deadline_task:
            self._deadline_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._deadline_task
        await self.supervisor.close(self.policy.stop_grace)
        for cleanup in self._cleanup:
            cleanup()
        self._cleanup.clear()

    async def __aenter__(self) -> Pool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
