"""``katago analysis`` as an asyncio object: concurrent queries, streamed responses by id."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from katapool.engine.process import EngineProcess
from katapool.errors import EngineError, EngineTerminatedError
from katapool.protocol.analysis import is_final

READY_MARKER = "Started, ready to begin handling requests"
ORPHANS_KEPT = 100  # the latest responses nobody asked for, kept for diagnosis

_END = object()


def expected_finals(query: dict[str, Any]) -> int:
    """How many final (``isDuringSearch: false``) responses a query produces."""
    turns = query.get("analyzeTurns")
    # KataGo analyses each listed turn once, however often it is listed.
    return len(set(turns)) if isinstance(turns, list) and turns else 1


class AnalysisEngine:
    """One ``katago analysis`` process; ids are katapool's, so callers never collide."""

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
        self.process = EngineProcess(argv, name=name, ready_marker=READY_MARKER,
                                     start_timeout=start_timeout, stderr_log=stderr_log)
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._prefix = f"kp{id(self):x}-"
        # Responses nobody asked for: the latest few kept for diagnosis, all of them counted.
        self.orphans: deque[dict[str, Any]] = deque(maxlen=ORPHANS_KEPT)
        self.orphan_count = 0
        self._closed = False

    async def start(self) -> None:
        await self.process.start()
        self._reader = asyncio.create_task(self._read_loop(), name=f"{self.process.name}-stdout")

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    line = await self.process.read_line()
                except (ValueError, asyncio.LimitOverrunError) as exc:
                    self._orphan({"unreadable": str(exc)})
                    continue
                if line is None:
                    break
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    msg = None
                if not isinstance(msg, dict):
                    self._orphan({"unparsed": line[:1000]})
                    continue
                queue = self._queues.get(str(msg.get("id")))
                if queue is None:
                    self._orphan(msg)
                else:
                    queue.put_nowait(msg)
        finally:
            self._closed = True
            for queue in self._queues.values():
                queue.put_nowait(_END)

    def _orphan(self, what: dict[str, Any]) -> None:
        self.orphans.append(what)
        self.orphan_count += 1

    async def query(self, query: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Send one query; yield its responses (partial and final) until it is complete."""
        if self._closed or self._reader is None:
            raise EngineTerminatedError(f"{self.process.name} is not running")
        qid = f"{self._prefix}{next(self._ids)}"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[qid] = queue
        caller_id = query.get("id")
        try:
            await self.process.send_line(json.dumps({**query, "id": qid}))
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
        code = await self.process.close()
        if self._reader:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._reader
        return code

    async def __aenter__(self) -> AnalysisEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
