"""A pool member: one engine that takes analysis JSON objects and gives JSON objects back.

The interface is deliberately small and says nothing about pipes, so a member can later be
an engine on another host (behind a socket or a distributed engine) as well as a local
process. Health checks and routing use only these methods.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from katapool.engine.analysis import READY_MARKER
from katapool.engine.diagnose import diagnose
from katapool.engine.process import EngineProcess
from katapool.errors import EngineStartError, EngineTerminatedError, KatapoolError

log = logging.getLogger(__name__)


class MemberStartError(KatapoolError):
    """A member could not be started; ``cause`` is the diagnosis, ``permanent`` says whether
    trying again can help."""

    def __init__(self, cause: str, permanent: bool) -> None:
        super().__init__(cause)
        self.cause = cause
        self.permanent = permanent


# Failures that a restart cannot fix: report them instead of restarting forever.
_PERMANENT = ("missing shared library", "bad config", "network file could not be loaded",
              "no OpenCL platform", "no OpenCL device", "needs FUSE", "exit 127",
              "not executable", "does not exist")


def is_permanent(cause: str) -> bool:
    return any(marker in cause for marker in _PERMANENT)


@runtime_checkable
class Member(Protocol):
    name: str

    @property
    def alive(self) -> bool: ...

    async def start(self) -> None:
        """Return when the member accepts queries; raise :class:`MemberStartError` if not."""

    async def send(self, message: dict[str, Any]) -> None:
        """Send one request; raise :class:`EngineTerminatedError` if the member is gone."""

    async def receive(self) -> dict[str, Any] | None:
        """The next response, or None once the member is gone for good."""

    async def stop(self, grace: float) -> None:
        """Finish politely: stop work, close input, wait ``grace``, then force."""

    async def kill(self) -> None:
        """Stop at once."""

    def describe_failure(self) -> str:
        """Why the member stopped, from what it said last."""


class LocalMember:
    """``katago analysis`` as a child process over pipes."""

    def __init__(self, name: str, argv: Sequence[str], *, start_timeout: float = 600.0,
                 stderr_log: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.start_timeout = start_timeout
        self.stderr_log = stderr_log
        self.env = env
        self.process: EngineProcess | None = None
        self.garbage_lines = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        self.process = EngineProcess(self.argv, name=self.name, ready_marker=READY_MARKER,
                                     start_timeout=self.start_timeout, stderr_log=self.stderr_log,
                                     env=self.env)
        try:
            await self.process.start()
        except EngineStartError as exc:
            cause = str(exc)
            raise MemberStartError(cause, is_permanent(cause)) from None

    async def send(self, message: dict[str, Any]) -> None:
        if self.process is None:
            raise EngineTerminatedError(f"{self.name} was never started")
        await self.process.send_line(json.dumps(message, separators=(",", ":")))

    def send_nowait(self, message: dict[str, Any]) -> None:
        """Write without waiting (the pipe buffers); a dead member's input is dropped."""
        if self.process is not None:
            self.process.write_nowait(json.dumps(message, separators=(",", ":")))

    def input_backlog(self) -> int:
        """Bytes written to the engine that it has not read yet (beyond the pipe's own buffer)."""
        return self.process.input_buffered() if self.process is not None else 0

    async def receive(self) -> dict[str, Any] | None:
        if self.process is None:
            return None
        while True:
            try:
                line = await self.process.read_line()
            except ValueError:  # a line beyond the stream limit: skip it, keep the member
                self.garbage_lines += 1
                continue
            if line is None:
                return None
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                msg = None
            if isinstance(msg, dict):
                return msg
            self.garbage_lines += 1
            log.warning("%s: ignoring a non-JSON-object line: %.200s", self.name, line)

    async def stop(self, grace: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.alive:
            with contextlib.suppress(EngineTerminatedError):
                await self.send({"id": "katapool-shutdown", "action": "terminate_all"})
        await self.process.close(grace=grace)

    async def kill(self) -> None:
        if self.process is not None:
            await self.process.kill()
            await self.process.close(grace=0.1, term_grace=0.1)

    def describe_failure(self) -> str:
        if self.process is None:
            return "never started"
        return diagnose(self.process.tail_text(), self.process.returncode)
