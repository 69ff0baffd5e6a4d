"""The pool's read API (members(), counters()) and the daemon views built on it: status and
/metrics, with the node each member runs on. Scripted in-process members (FAKE, see
test_router_logic.py): a real engine shows nothing more here, and a member on another node
is what this API is for."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from pool_helpers import Collector, wait_for
from rich.console import Console
from test_router_logic import FAST, ScriptedMember, q

from katapool.config.poolfile import PoolFile
from katapool.pool import MemberSnapshot, Pool, PoolCounters
from katapool.server.dashboard import status_table
from katapool.server.hub import Hub
from katapool.server.metrics import Metrics


class ElsewhereMember(ScriptedMember):
    """FAKE: a member that says it runs on another node; its pid is that node's, so this
    machine's process of the same number (here: the test's own) must not be measured."""

    node = "node-7"
    pid = os.getpid()


class SilentMember(ScriptedMember):
    """FAKE: takes analysis queries and never answers them (actions are answered)."""

    async def send(self, message: dict[str, Any]) -> None:
        if message.get("action") is None and "moves" in message:
            self.received.append(message)
            return
        await super().send(message)


def two_kinds(index: int, generation: int) -> ScriptedMember:
    return ElsewhereMember(f"m{index}") if index else ScriptedMember(f"m{index}")


def test_members_and_counters_after_work() -> None:
    async def go() -> tuple[list[MemberSnapshot], PoolCounters]:
        c = Collector()
        async with Pool([two_kinds, two_kinds], FAST, labels=["gpu:0", "gpu:1"]) as pool:
            await pool.supervisor.wait_until_all_settled()
            pool.session(c).submit(q("a"))
            await asyncio.wait_for(pool.drain(), 5)
            return pool.members(), pool.counters()

    members, counters = asyncio.run(go())
    assert [(m.index, m.name, m.device, m.node) for m in members] == [
        (0, "member-0", "gpu:0", "local"), (1, "member-1", "gpu:1", "node-7")]
    assert [m.local for m in members] == [True, False]
    assert all(m.state == "ready" and m.ready for m in members)
    assert all(m.in_flight == 0 and m.load == 0 and m.restarts == 0 for m in members)
    assert sum(m.visits_done for m in members) == 2  # two turns, one visit each
    answered = [m for m in members if m.visits_done]
    assert answered and all(m.latency_p50_s is not None for m in answered)
    assert members[1].status()["node"] == "node-7"
    assert counters.outstanding == 0 and counters.waiting == 0
    assert counters.oldest_query_s is None and counters.events["accepted"] == 1


def test_work_in_flight_is_visible() -> None:
    async def go() -> tuple[MemberSnapshot, PoolCounters, int]:
        pool = Pool([lambda i, g: SilentMember(f"m{i}")], FAST)
        await pool.start()
        try:
            pool.session(Collector()).submit(q("held"))
            await wait_for(lambda: pool.members()[0].in_flight == 1, 5, "the query on m0")
            return pool.members()[0], pool.counters(), pool.outstanding
        finally:
            await pool.close()

    member, counters, outstanding = asyncio.run(go())
    assert member.load > 0 and member.visits_done == 0 and member.latency_p50_s is None
    assert outstanding == counters.outstanding == 1
    assert counters.oldest_query_s is not None and counters.oldest_waiting_s is None


def test_status_and_metrics_name_each_member_s_node() -> None:
    async def go() -> tuple[dict[str, Any], str]:
        hub = Hub(PoolFile(), lambda name, spec: Pool([two_kinds, two_kinds], FAST))
        metrics = Metrics(hub)
        await hub.start()
        try:
            await hub.served["main"].pool.supervisor.wait_until_all_settled()
            return hub.status(), metrics.render().decode()
        finally:
            await hub.close()

    status, text = asyncio.run(go())
    [model] = status["models"]
    assert [(m["name"], m["node"], m["state"]) for m in model["members"]] == [
        ("member-0", "local", "ready"), ("member-1", "node-7", "ready")]
    assert model["members"][1]["pid"] == os.getpid() and model["members"][1]["rss_mb"] is None
    assert model["queue"] == 0 and model["router"]["accepted"] == 0
    for family in ("katapool_member_restarts_total", "katapool_engine_garbage_lines_total"):
        samples = [dict(re.findall(r'(\w+)="([^"]*)"', labels))
                   for labels in re.findall(rf"^{family}{{(.*)}} ", text, re.MULTILINE)]
        assert sorted(samples, key=str) == [
            {"model": "main", "member": "member-0", "node": "local"},
            {"model": "main", "member": "member-1", "node": "node-7"}], text
    assert re.search(r'^katapool_members_up\{model="main"\} 2\.0$', text, re.MULTILINE), text


def test_the_dashboard_names_a_member_s_node_only_when_it_is_elsewhere() -> None:
    members = [{"name": "member-0", "state": "ready", "device": "gpu:0", "node": "local"},
               {"name": "member-1", "state": "ready", "device": "gpu:1", "node": "node-7"}]
    console = Console(width=200, record=True)
    console.print(status_table({"models": [{"name": "main", "members": members}]}))
    text = console.export_text()
    assert "gpu:1 @ node-7" in text and "gpu:0 @" not in text
