"""What a pool shows the outside (status, dashboard, /metrics): typed snapshots, copied out of
the supervisor's slots and the router's records, so views never hold the pool's own state."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from katapool.pool.router import MemberLoad, Router
from katapool.pool.supervisor import LOCAL_NODE, Slot

MemberState = Literal["waiting", "starting", "ready", "draining", "restarting", "failed",
                      "stopped"]


def percentiles(values: Iterable[float]) -> tuple[float | None, float | None]:
    """(median, 99th percentile) of ``values``; (None, None) if there are none."""
    ordered = sorted(values)
    if not ordered:
        return None, None
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass(frozen=True)
class MemberSnapshot:
    """One member as it is now."""

    index: int
    name: str
    state: MemberState  # "draining": ready, finishing its work before a planned replacement
    device: str  # the device label ("" if none)
    node: str  # where it runs: "local" for a child process of this katapool
    gpu: str | None  # on a cluster: the GPU its node gave it (None: local, or no GPU)
    pid: int | None
    restarts: int
    reloads: int
    restart_causes: Mapping[str, int]
    last_cause: str | None
    garbage_lines: int  # engine output lines that were not JSON objects, all its generations
    load: float  # outstanding turns weighted by visits
    in_flight: int  # parts of queries on it
    visits_done: int  # visits of the final responses it gave
    latency_p50_s: float | None  # time to finish its share of a query, latest few
    latency_p99_s: float | None

    @property
    def local(self) -> bool:
        """A child process of this katapool (its pid is one on this machine)."""
        return self.node == LOCAL_NODE

    @property
    def ready(self) -> bool:
        """Taking work now, or finishing its work before a replacement."""
        return self.state in ("ready", "draining")

    def status(self) -> dict[str, Any]:
        """The fields of ``katapool status`` and :meth:`Pool.status` (JSON-ready)."""
        return {"name": self.name, "state": self.state, "restarts": self.restarts,
                "reloads": self.reloads, "device": self.device, "node": self.node,
                "gpu": self.gpu,
                "load": round(self.load, 1), "last_cause": self.last_cause, "pid": self.pid,
                "restart_causes": dict(self.restart_causes), "garbage_lines": self.garbage_lines}


@dataclass(frozen=True)
class PoolCounters:
    """The router's pool-wide numbers."""

    outstanding: int  # queries accepted and not yet finished
    waiting: int  # queries waiting for a free member
    oldest_waiting_s: float | None  # age of the oldest waiting query (None: none waits)
    oldest_query_s: float | None  # age of the oldest unfinished query
    events: Mapping[str, int]  # accepted, rejected, rerouted, rerouted_turns, quarantined, …


def member_snapshot(slot: Slot, record: MemberLoad) -> MemberSnapshot:
    state: MemberState = "draining" if slot.draining and slot.ready else slot.state.value
    pid = getattr(slot.member, "pid", None)
    gpu = getattr(slot.member, "gpu", None)
    p50, p99 = percentiles(record.latencies)
    return MemberSnapshot(
        index=slot.index, name=slot.name, state=state, device=slot.label, node=slot.node,
        gpu=str(gpu) if gpu is not None else None,
        pid=pid if isinstance(pid, int) else None, restarts=slot.restarts,
        reloads=slot.reloads, restart_causes=dict(slot.restart_causes),
        last_cause=slot.last_cause, garbage_lines=slot.garbage_lines, load=record.load,
        in_flight=record.parts, visits_done=record.visits_done, latency_p50_s=p50,
        latency_p99_s=p99)


def pool_counters(router: Router) -> PoolCounters:
    oldest_waiting, oldest = router.oldest_ages()
    return PoolCounters(outstanding=router.outstanding, waiting=len(router.waiting),
                        oldest_waiting_s=oldest_waiting, oldest_query_s=oldest,
                        events=dict(router.stats))
