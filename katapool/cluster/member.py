"""The driver side of a Ray member: the pool's :class:`~katapool.pool.member.Member`
interface over one :class:`~katapool.cluster.host.MemberHost` actor.

Ray's own retries stay off (``max_restarts=0``, ``max_task_retries=0``): a retried call could
hand the engine a query twice, and duplicate finals break exactly-once. When the actor or its
node is lost, the output stream ends and the member is gone; katapool's supervisor replaces it
and the router re-sends its turns, as for a local engine that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from katapool.cluster import CPU_RESOURCE, require_ray
from katapool.cluster.recipe import MemberRecipe
from katapool.errors import EngineTerminatedError

log = logging.getLogger(__name__)

_actor_class: Any = None


def host_actor_class() -> Any:
    """``MemberHost`` as a Ray actor class (made once, when Ray is first needed)."""
    global _actor_class
    if _actor_class is None:
        ray = require_ray()
        from katapool.cluster.host import MemberHost

        _actor_class = ray.remote(MemberHost)
    return _actor_class


@dataclass(frozen=True)
class Placement:
    """What one member asks Ray for, and how members of a model spread over nodes."""

    gpus: float = 1.0  # 0: a CPU member, which asks for the katapool_cpu resource instead
    resources: dict[str, float] = field(default_factory=dict)
    strategy: str = "spread"  # or "pack"

    def actor_options(self) -> dict[str, Any]:
        resources = dict(self.resources)
        if not self.gpus and not resources:
            resources[CPU_RESOURCE] = 1.0
        return {
            "num_cpus": 0,  # the engine's threads are katapool's to plan, not Ray's CPU slots
            "num_gpus": self.gpus,
            "resources": resources,
            "max_restarts": 0,
            "max_task_retries": 0,
            "max_concurrency": 1000,
            "scheduling_strategy": "SPREAD" if self.strategy == "spread" else "DEFAULT",
        }


class RayMember:
    """A member whose engine runs on whichever node Ray places its actor."""

    def __init__(self, name: str, recipe: MemberRecipe, placement: Placement) -> None:
        self.name = name
        self.recipe = recipe
        self.placement = placement
        self.actor: Any = None
        self.node = ""  # where it runs once placed: "ADDRESS/NODE-ID" (short)
        self.node_id = ""
        self.machine = ""  # the node's address: members on one machine start one at a time
        self.gpu: str | None = None
        self.pid: int | None = None  # the engine's pid on its node
        self.worker_pid: int | None = None  # the actor's process on its node
        self.version = ""
        self.git_hash = ""
        self.label = ""
        self.garbage_lines = 0
        self._placed = False
        self._started = False
        self._ended: str | None = None
        self._stream: Any = None
        self._pending: list[str] = []
        self._decoded: list[dict[str, Any]] = []
        self._seq = 0
        self._flush_scheduled = False
        self._unacked = 0  # bytes sent whose batch the actor has not taken yet
        self._engine_backlog = 0
        self._sends: set[asyncio.Future[Any]] = set()

    @property
    def alive(self) -> bool:
        return self._started and self._ended is None

    @property
    def waiting(self) -> bool:
        """Created, but Ray has not placed it yet (no node has the resources free)."""
        return self.actor is not None and not self._placed

    async def place(self) -> None:
        """Create the actor and return once Ray has placed it on a node; until then it
        waits for resources (a free GPU), which is not a failure."""
        if self._placed:
            return
        from katapool.pool.member import MemberStartError

        if self.actor is None:
            self.actor = host_actor_class().options(**self.placement.actor_options()) \
                .remote(self.name, self.recipe)
        try:
            where = await self.actor.where.remote()
        except Exception as exc:
            raise MemberStartError(f"node lost while placing: {_brief(exc)}", False) from None
        self._placed = True
        self.machine, self.node_id = where["ip"], where["node_id"]
        self.node = f"{where['ip']}/{where['node_id'][:8]}"
        self.worker_pid = where["pid"]
        self.gpu = where["gpus"][0] if where["gpus"] else None

    async def start(self) -> None:
        from katapool.pool.member import MemberStartError

        await self.place()
        try:
            started = await self.actor.start.remote()
        except Exception as exc:
            raise MemberStartError(f"node lost while starting: {_brief(exc)}", False) from None
        if "error" in started:
            raise MemberStartError(f"on {self.node}: {started['error']}", started["permanent"],
                                   bool(started.get("exited")))
        self.pid, self.label = started["pid"], started["label"]
        self.version, self.git_hash = started["version"], started["git_hash"]
        self._stream = self.actor.stream.options(num_returns="streaming").remote()
        self._started = True

    async def send(self, message: dict[str, Any]) -> None:
        if not self.alive:
            raise EngineTerminatedError(f"{self.name} is gone ({self._ended or 'not started'})")
        self.send_nowait(message)

    def send_nowait(self, message: dict[str, Any]) -> None:
        """Queue a line; everything queued in one turn of the event loop goes as one batch."""
        if not self.alive:
            return
        line = json.dumps(message, separators=(",", ":"))
        self._pending.append(line)
        self._unacked += len(line) + 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending or self._ended is not None:
            return
        batch, self._pending = self._pending, []
        size = sum(len(line) + 1 for line in batch)
        ref = self.actor.send.remote(self._seq, batch)
        self._seq += 1
        fut = asyncio.ensure_future(self._acked(ref, size))
        self._sends.add(fut)
        fut.add_done_callback(self._sends.discard)

    async def _acked(self, ref: Any, size: int) -> None:
        try:
            self._engine_backlog = await ref
        except Exception:  # the actor is gone: the output stream reports it
            pass
        finally:
            self._unacked -= size

    def input_backlog(self) -> int:
        return self._unacked + self._engine_backlog

    async def receive(self) -> dict[str, Any] | None:
        while not self._decoded:
            if self._ended is not None or self._stream is None:
                return None
            try:
                ref = await self._stream.__anext__()
                item = await ref
            except StopAsyncIteration:
                self._ended = self._ended or "its output ended"
                return None
            except Exception as exc:  # the actor, its worker process or its node is lost
                self._ended = f"lost its Ray actor on {self.node or 'its node'}: {_brief(exc)}"
                return None
            if isinstance(item, dict):
                self._ended = item["ended"]
                self.garbage_lines += int(item.get("garbage_lines", 0))
                continue
            for line in item:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    msg = None
                if isinstance(msg, dict):
                    self._decoded.append(msg)
                else:
                    self.garbage_lines += 1
                    log.warning("%s: ignoring a non-JSON-object line: %.200s", self.name, line)
            self._decoded.reverse()  # popped from the end, so in order
        return self._decoded.pop()

    async def stop(self, grace: float = 10.0) -> None:
        if self.actor is None:
            return
        if self._started and self._ended is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.actor.stop.remote(grace), grace + 30.0)
        await self._destroy()

    async def kill(self) -> None:
        if self.actor is None:
            return
        if self._started and self._ended is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.actor.kill.remote(), 15.0)
        await self._destroy()

    async def _destroy(self) -> None:
        """End the actor (its engine dies with its worker through PDEATHSIG)."""
        ray = require_ray()
        actor, self.actor = self.actor, None
        if self._ended is None:
            self._ended = "stopped"
        with contextlib.suppress(Exception):
            await asyncio.to_thread(ray.kill, actor, no_restart=True)

    def describe_failure(self) -> str:
        return self._ended or "not started"


def _brief(exc: BaseException) -> str:
    """A Ray error's first line (its messages carry whole tracebacks)."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}".strip()
