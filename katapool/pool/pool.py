"""The pool facade: members + supervisor + router, as one async context manager."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from katapool.errors import EngineStartError
from katapool.pool.policy import PoolPolicy
from katapool.pool.router import Deliver, Router, Session
from katapool.pool.supervisor import MemberFactory, Supervisor


class Pool:
    """A pool of analysis engines behind one router.

    >>> # async with Pool(factories, PoolPolicy(), version="1.18.1") as pool:
    >>> #     session = pool.session(print); session.submit(line); await pool.drain()
    """

    def __init__(self, factories: list[MemberFactory], policy: PoolPolicy | None = None,
                 version: str = "", git_hash: str | None = None) -> None:
        if not factories:
            raise ValueError("a pool needs at least one member")
        self.policy = policy or PoolPolicy()
        self.router = Router(self.policy, version, git_hash)
        self.supervisor = Supervisor(factories, self.policy, self.router)
        self.router.supervisor = self.supervisor
        self._deadline_task: asyncio.Task[None] | None = None

    async def start(self, wait: str = "any") -> None:
        """Start every member; return when one is ready (``wait="any"``), when all have
        settled (``"all"``), or at once (``"none"``)."""
        await self.supervisor.start()
        self._deadline_task = asyncio.create_task(self.router.watch_deadlines())
        if wait == "any" and not await self.supervisor.wait_until_any_ready():
            causes = "; ".join(f"{s.name}: {s.last_cause}" for s in self.supervisor.slots)
            await self.close()
            raise EngineStartError(f"no pool member could start ({causes})")
        if wait == "all":
            await self.supervisor.wait_until_all_settled()
            if not any(s.ready for s in self.supervisor.slots):
                causes = "; ".join(f"{s.name}: {s.last_cause}" for s in self.supervisor.slots)
                await self.close()
                raise EngineStartError(f"no pool member could start ({causes})")

    def session(self, deliver: Deliver) -> Session:
        return Session(self.router, deliver)

    async def drain(self) -> None:
        await self.router.wait_idle()

    def status(self) -> list[dict[str, Any]]:
        return [s.status() for s in self.supervisor.slots]

    async def close(self) -> None:
        if self._deadline_task:
            self._deadline_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._deadline_task
        await self.supervisor.close(self.policy.stop_grace)

    async def __aenter__(self) -> Pool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
