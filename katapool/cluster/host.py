"""The node side of a Ray member: an actor that owns one local engine.

It is today's :class:`~katapool.pool.member.LocalMember` (pipes, PDEATHSIG, stderr
diagnosis), built on the node from a :class:`MemberRecipe`. Ray runs the calls of an async
actor concurrently and documents no order for them, so input batches carry sequence numbers
and are written to the engine strictly in that order. Output goes back as one long-lived
stream of line batches; its end (with the engine's diagnosis) is the member's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from katapool.cluster import CPU_RESOURCE
from katapool.cluster.recipe import MemberRecipe
from katapool.errors import KatapoolError
from katapool.pool.member import LocalMember, MemberStartError

log = logging.getLogger(__name__)

BATCH_LINES = 512  # lines per stream item at most (a burst is split, not held back)


class MemberHost:
    """Wrapped with ``ray.remote`` by :mod:`katapool.cluster.member`; plain Python here so
    that it can be read and tested without Ray."""

    def __init__(self, name: str, recipe: MemberRecipe) -> None:
        self.name = name
        self.recipe = recipe
        self.member: LocalMember | None = None
        self._cleanup: list[Any] = []
        self._next_seq = 0
        self._held: dict[int, list[str]] = {}
        self._lines: list[str] = []
        self._wake: asyncio.Event | None = None
        self._ended: str | None = None  # why the engine's output ended
        self._reader: asyncio.Task[None] | None = None
        self.garbage_lines = 0
        self.version = self.git_hash = self.label = ""  # known once built

    def where(self) -> dict[str, Any]:
        """Where Ray placed this actor (answers only once it is placed)."""
        import ray

        ctx = ray.get_runtime_context()
        ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return {"node_id": ctx.get_node_id(), "host": socket.gethostname(), "ip": ip,
                "gpus": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid()}

    def _members_on_node(self) -> int:
        """How many katapool members this node is declared to host (they share its CPU
        and RAM: threads and cache sizes are split between them)."""
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        for node in ray.nodes():  # type: ignore[no-untyped-call]
            if node.get("NodeID") == node_id:
                res = node.get("Resources", {})
                return max(1, int(res.get(CPU_RESOURCE, 0) + res.get("GPU", 0)))
        return 1

    def _build(self, gpus: list[int]) -> LocalMember:
        from katapool.pool.launch import launch_from_options

        r = self.recipe
        launched = launch_from_options(
            model=r.model, members=1, gpus=gpus or None, preset=r.preset, katago=r.katago,
            human_model=r.human_model, configs=[Path(c).expanduser() for c in r.configs] or None,
            overrides=list(r.overrides), analysis_threads=r.analysis_threads,
            start_timeout=r.start_timeout, batch=r.batch, log_prefix=f"{os.getpid()}-{self.name}-",
            machine_members=self._members_on_node())
        self._cleanup.append(launched.cleanup)
        self.version = launched.info.version
        self.git_hash = launched.info.git_revision or ""
        self.label = launched.labels[0]
        member = launched.factories[0](0, 0)
        assert isinstance(member, LocalMember)
        member.name = self.name
        return member

    async def start(self) -> dict[str, Any]:
        """Start the engine; a start failure comes back as data (a diagnosis and whether a
        restart can help), not as an exception, so the driver can tell it from a lost node."""
        import ray

        gpus = [int(g) for g in ray.get_gpu_ids()]
        # Ray hides the other GPUs from the actor (CUDA_VISIBLE_DEVICES); katapool numbers
        # devices itself, as on one machine, and gives the engine its GPU by that number.
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        os.environ.update(self.recipe.env)  # this worker process serves this member alone
        try:
            self.member = await asyncio.to_thread(self._build, gpus)
        except KatapoolError as exc:  # no engine, network or valid config on this node
            return {"error": str(exc), "permanent": True}
        try:
            await self.member.start()
        except MemberStartError as exc:
            return {"error": exc.cause, "permanent": exc.permanent, "exited": exc.exited}
        self._wake = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        return {"pid": self.member.pid, "label": self.label, "version": self.version,
                "git_hash": self.git_hash}

    async def _read(self) -> None:
        assert self.member is not None and self.member.process is not None and self._wake
        process = self.member.process
        try:
            while True:
                try:
                    line = await process.read_line()
                except ValueError:  # beyond the stream limit: skipped, the member kept
                    self.garbage_lines += 1
                    continue
                if line is None:
                    break
                self._lines.append(line)
                self._wake.set()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 5.0)
            self._ended = self.member.describe_failure()
            self._wake.set()

    def send(self, seq: int, lines: list[str]) -> int:
        """Take batch ``seq``; write every batch that is now next in order. Returns the bytes
        the engine has not read yet (the driver's view of this member's input backlog)."""
        self._held[seq] = lines
        process = self.member.process if self.member is not None else None
        while self._next_seq in self._held:
            batch = self._held.pop(self._next_seq)
            self._next_seq += 1
            if process is not None:
                for line in batch:
                    process.write_nowait(line)
        return process.input_buffered() if process is not None else 0

    async def stream(self) -> AsyncIterator[list[str] | dict[str, Any]]:
        """The engine's output as batches of lines; last, ``{"ended": diagnosis}``."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._lines:
                batch, self._lines = self._lines[:BATCH_LINES], self._lines[BATCH_LINES:]
                yield batch
            if self._ended is not None:
                yield {"ended": self._ended, "garbage_lines": self.garbage_lines}
                return

    async def stop(self, grace: float) -> None:
        if self.member is not None:
            await self.member.stop(grace)
        self._clean()

    async def kill(self) -> None:
        if self.member is not None:
            await self.member.kill()
        self._clean()

    def _clean(self) -> None:
        for cleanup in self._cleanup:
            with contextlib.suppress(Exception):
                cleanup()
        self._cleanup.clear()

    def engine_pid(self) -> int | None:
        return self.member.pid if self.member is not None else None
