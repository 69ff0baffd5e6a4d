"""A pool member: one engine that takes analysis JSON objects and gives JSON objects back.

The interface is deliberately small and says nothing about pipes, so a member can later be
an engine on another host (behind a socket or a distributed engine) as well as a local
process. Health checks and routing use only these methods. Optional extras, looked up with
``getattr``: ``node`` (where it runs, for status displays; "local" if absent), ``pid``,
``garbage_lines`` (output lines that were not JSON objects), ``send_nowait`` and
``input_backlog`` (see :class:`~katapool.pool.supervisor.Slot`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from katapool.engine.analysis_process import AnalysisProcess
from katapool.errors import EngineStartError, KatapoolError


class MemberStartError(KatapoolError):
    """A member could not be started; ``cause`` is the diagnosis, ``permanent`` says whether
    trying again can help. ``exited``: the engine quit on its own before it was ready (so the
    same cause twice in a row is no passing trouble: see the supervisor)."""

    def __init__(self, cause: str, permanent: bool, exited: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.permanent = permanent
        self.exited = exited


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


class LocalMember(AnalysisProcess):
    """``katago analysis`` as a child process over pipes: :class:`AnalysisProcess` (which
    reads the engine's output) with its start failures told apart as permanent or not."""

    node = "local"  # where it runs, for status displays

    async def start(self) -> None:
        try:
            await super().start()
        except EngineStartError as exc:
            cause = str(exc)
            raise MemberStartError(cause, is_permanent(cause), exc.exited) from None
