"""``katago analysis`` as an asyncio object: concurrent queries, streamed responses by id."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from katapool.engine.analysis_process import READY_MARKER, AnalysisProcess
from katapool.engine.process import EngineProcess
from katapool.errors import EngineError, EngineTerminatedError
from katapool.protocol.analysis import is_final

__all__ = ["ORPHANS_KEPT", "READY_MARKER", "AnalysisEngine", "expected_finals"]

ORPHANS_KEPT = 100  # the latest responses nobody asked for, kept for diagnosis

_END = object()


def expected_finals(query: dict[str, Any]) -> int:
    """How many final (``isDuringSearch: false``) responses a query produces."""
    turns = query.get("analyzeTurns")
    # KataGo analyses each listed turn once, however often it is listed.
    return len(set(turns)) if isinstance(turns, list) and turns else 1


class AnalysisEngine:
    """One ``katago analysis`` process; ids are katapool's, so callers never collide.

    It reads the engine through :class:`AnalysisProcess`, as the pool's members do: lines that
    are not JSON objects are counted in :attr:`garbage_lines`; :attr:`orphans` are JSON
    responses that no query of this object is waiting for."""

    def __init__(
        self,
        katago: Path,
        config: Path,
        model: Path,
        *,
        name: str = "analysis",
        extra_args: Sequence[str] = (),
        stderr_log: Path | None = None,
        start_timeout: float = 600.0,
    ) -> None:
        argv = [str(katago), "analysis", "-config", str(config), "-model", str(model), *extra_args]
        self.analysis = AnalysisProcess(name, argv, start_timeout=start_timeout,
                                        stderr_log=stderr_log)
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._prefix = f"kp{id(self):x}-"
        # Responses nobody asked for: the latest few kept for diagnosis, all of them counted.
        self.orphans: deque[dict[str, Any]] = deque(maxlen=ORPHANS_KEPT)
        self.orphan_count = 0
        self._closed = False

    @property
    def process(self) -> EngineProcess:
        return self.analysis.process

    @property
    def garbage_lines(self) -> int:
        return self.analysis.garbage_lines

    @property
    def garbage(self) -> deque[str]:
        """The latest lines that were not JSON objects (cut short), for diagnosis."""
        return self.analysis.garbage

    async def start(self) -> None:
        await self.analysis.start()
        self._reader = asyncio.create_task(self._read_loop(), name=f"{self.process.name}-stdout")

    async def _read_loop(self) -> None:
        try:
            while (msg := await self.analysis.receive()) is not None:
                queue = self._queues.get(str(msg.get("id")))
                if queue is None:
                    self.orphans.append(msg)
                    self.orphan_count += 1
                else:
                    queue.put_nowait(msg)
        finally:
            self._closed = True
            for queue in self._queues.values():
                queue.put_nowait(_END)

    async def query(self, query: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Send one query; yield its responses (partial and final) until it is complete."""
        if self._closed or self._reader is None:
            raise EngineTerminatedError(f"{self.process.name} is not running")
        qid = f"{self._prefix}{next(self._ids)}"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[qid] = queue
        caller_id = query.get("id")
        try:
            await self.analysis.send({**query, "id": qid})
            remaining = expected_finals(query)
            while remaining > 0:
                msg = await queue.get()
                if msg is _END:
                    raise EngineTerminatedError(
                        f"{self.process.name} exited with {remaining} result(s) outstanding"
                    )
                if caller_id is not None:
                    msg["id"] = caller_id
                if "error" in msg or is_final(msg):
                    remaining -= 1
                if "error" in msg:
                    raise EngineError(f"engine rejected the query: {msg['error']}"
                                      + (f" (field {msg['field']})" if "field" in msg else ""))
                yield msg
        finally:
            self._queues.pop(qid, None)

    async def request(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        return [msg async for msg in self.query(query) if is_final(msg)]

    async def close(self) -> int | None:
        code = await self.analysis.close()
        if self._reader:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._reader
        return code

    async def __aenter__(self) -> AnalysisEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
