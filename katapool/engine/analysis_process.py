"""``katago analysis`` as a child process that takes JSON objects and gives JSON objects back.

The one reader of an analysis engine's stdout: the pool's local members and
:class:`~katapool.engine.analysis.AnalysisEngine` both read through it, so there is one ready
marker and one policy for lines that are not JSON objects (skipped and counted, the latest
few kept for diagnosis; a crash is told by the process ending, never by its output).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from katapool.engine.diagnose import diagnose
from katapool.engine.process import STREAM_LIMIT, EngineProcess
from katapool.errors import EngineTerminatedError

log = logging.getLogger(__name__)

READY_MARKER = "Started, ready to begin handling requests"
GARBAGE_KEPT = 20  # the latest lines that were not JSON objects, for diagnosis
GARBAGE_SHOWN = 200  # characters kept (and logged) of each
SHUTDOWN_ID = "katapool-shutdown"


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class AnalysisProcess:
    """One ``katago analysis`` process over pipes, as JSON objects in and out."""

    def __init__(self, name: str, argv: Sequence[str], *, start_timeout: float = 600.0,
                 stderr_log: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        # Built at once (not when started) so that its command can still be adjusted.
        self.process = EngineProcess(argv, name=name, ready_marker=READY_MARKER,
                                     start_timeout=start_timeout, stderr_log=stderr_log, env=env)
        self.garbage_lines = 0
        self.garbage: deque[str] = deque(maxlen=GARBAGE_KEPT)
        self._started = False

    @property
    def argv(self) -> list[str]:
        return self.process.argv

    @argv.setter
    def argv(self, argv: Sequence[str]) -> None:
        self.process.argv = list(argv)

    @property
    def alive(self) -> bool:
        return self.process.alive

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def start(self) -> None:
        """Return once the engine is ready; raise :class:`EngineStartError` if it is not."""
        self._started = True
        await self.process.start()

    async def send(self, message: dict[str, Any]) -> None:
        if not self._started:
            raise EngineTerminatedError(f"{self.name} was never started")
        await self.process.send_line(encode(message))

    def send_nowait(self, message: dict[str, Any]) -> None:
        """Write without waiting (the pipe buffers); a dead engine's input is dropped."""
        self.process.write_nowait(encode(message))

    def input_backlog(self) -> int:
        """Bytes written to the engine that it has not read yet (beyond the pipe's own buffer)."""
        return self.process.input_buffered()

    async def receive(self) -> dict[str, Any] | None:
        """The next JSON object the engine wrote, or None once its output has ended."""
        if self.process.pid is None:
            return None
        while True:
            try:
                line = await self.process.read_line()
            except (ValueError, asyncio.LimitOverrunError):
                # Beyond the stream limit: skipped, and the engine keeps its place.
                self._skip(f"<a line over the {STREAM_LIMIT >> 20} MiB stream limit>")
                continue
            if line is None:
                return None
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                msg = None
            if isinstance(msg, dict):
                return msg
            self._skip(line)

    def _skip(self, line: str) -> None:
        self.garbage_lines += 1
        self.garbage.append(line[:GARBAGE_SHOWN])
        log.warning("%s: ignoring a line that is not a JSON object: %.*s", self.name,
                    GARBAGE_SHOWN, line)

    async def close(self, grace: float = 10.0, term_grace: float = 5.0) -> int | None:
        """Close its input and let it finish what it was sent; then SIGTERM, then SIGKILL."""
        return await self.process.close(grace=grace, term_grace=term_grace)

    async def stop(self, grace: float = 10.0) -> None:
        """Finish politely: stop its searches, close its input, wait ``grace``, then force."""
        if self.process.alive:
            with contextlib.suppress(EngineTerminatedError):
                await self.send({"id": SHUTDOWN_ID, "action": "terminate_all"})
        await self.process.close(grace=grace)

    async def kill(self) -> None:
        await self.process.kill()
        await self.process.close(grace=0.1, term_grace=0.1)

    def describe_failure(self) -> str:
        """Why it stopped, from what it said last."""
        if not self._started:
            return "never started"
        return diagnose(self.process.tail_text(), self.process.returncode)
