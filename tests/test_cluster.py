"""Members on a real Ray cluster, several nodes simulated on this machine.

One cluster per module (a head with no GPUs, two worker nodes declaring fake GPUs: Ray's
accounting is real, the GPUs are not). Most members run ``benchmarks/fake_paced_katago.py``,
a FAKE ENGINE named as such with a fixed cost per turn, so that node loss can be timed at
random moments under load; one test runs the real KataGo (PoCL) on a CPU member.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon_helpers import running_daemon
from pool_helpers import wait_for

import processes
from conftest import G170, ROOT, Katapool
from katapool.cluster import CPU_RESOURCE
from katapool.cluster.member import Placement, RayMember
from katapool.cluster.recipe import MemberRecipe
from katapool.pool import Pool, PoolPolicy
from katapool.server import control

ray = pytest.importorskip("ray", reason="the Ray extra (bin/bootstrap test installs it)")
from ray.cluster_utils import Cluster  # noqa: E402

FAKE = ROOT / "benchmarks" / "fake_paced_katago.py"
QUERIES = 520
POLICY = PoolPolicy(backoff_initial=0.05, start_timeout=120)


@pytest.fixture(scope="module")
def cluster(kp: Katapool) -> Iterator[Cluster]:
    """A head (no GPU, no katapool resources: no member lands there) and three nodes with two
    fake GPUs each (one is there to be removed), their processes in the test data directory
    (the installed engine)."""
    saved = {k: os.environ.get(k) for k in ("KATAPOOL_DATA_DIR",)}
    os.environ["KATAPOOL_DATA_DIR"] = str(kp.data_dir)  # inherited by the nodes' processes
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                      "include_dashboard": False})
    for _ in range(3):
        c.add_node(num_cpus=1, num_gpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="katapool-test", log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()  # type: ignore[no-untyped-call]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def fake_recipe(tmp: Path, pace_ms: int = 5) -> MemberRecipe:
    cfg = tmp / "fake.cfg"
    cfg.write_text("logToStderr = false\n")
    return MemberRecipe(katago=str(FAKE), model=str(G170), configs=(str(cfg),),
                        env={"FAKE_PACE_MS": str(pace_ms)})


def ray_pool(recipe: MemberRecipe, members: int, placement: Placement | None = None,
             policy: PoolPolicy = POLICY) -> Pool:
    where = placement or Placement(gpus=1)

    def make(slot: int, generation: int) -> RayMember:
        return RayMember(f"member-{slot}", recipe, where)

    return Pool([make] * members, policy)


def fake_engines() -> list[psutil.Process]:
    """The fake engines of this test run still alive, on every node (all are local here)."""
    out = []
    for p in processes.ours():
        try:
            if any("fake_paced_katago" in part for part in p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


class Ledger:
    """What came back: finals per (id, turn), partial visits per (id, turn), errors."""

    def __init__(self) -> None:
        self.finals: Counter[tuple[str, int]] = Counter()
        self.partials: dict[tuple[str, int], list[int]] = defaultdict(list)
        self.errors: list[dict[str, Any]] = []

    def __call__(self, msg: dict[str, Any]) -> None:
        if "error" in msg:
            self.errors.append(msg)
            return
        key = (str(msg["id"]), int(msg["turnNumber"]))
        if msg.get("isDuringSearch") is False:
            self.finals[key] += 1
        else:
            assert self.finals[key] == 0, f"a partial after the final for {key}"
            self.partials[key].append(int(msg["rootInfo"]["visits"]))


def workload(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Single turns, many-turn analyzeTurns, partials; all with distinct ids."""
    out = []
    for i in range(n):
        moves = [["B" if k % 2 == 0 else "W", f"{'ABCDEFGHJ'[k % 9]}{1 + k // 9}"]
                 for k in range(rng.randint(4, 12))]
        q: dict[str, Any] = {"id": f"n{i}", "moves": moves, "rules": "tromp-taylor",
                             "komi": 7.5, "boardXSize": 9, "boardYSize": 9, "maxVisits": 10}
        kind = rng.random()
        if kind < 0.3:
            q["analyzeTurns"] = sorted(rng.sample(range(len(moves) + 1), rng.randint(2, 5)))
        if 0.3 <= kind < 0.45 or kind > 0.9:
            q["reportDuringSearchEvery"] = 0.002
        out.append(q)
    return out


def expected_turns(q: dict[str, Any]) -> list[int]:
    return sorted(set(q.get("analyzeTurns") or [len(q["moves"])]))


async def run_with_fault(pool: Pool, fault: Any, seed: int) -> Ledger:
    """Send the workload (with terminates); run ``fault`` once a random share is answered."""
    rng = random.Random(seed)
    queries = workload(rng, QUERIES)
    ledger = Ledger()
    session = pool.session(ledger)
    at = rng.uniform(0.25, 0.6) * QUERIES
    for q in queries:
        session.submit(json.dumps(q))
    stopped = rng.sample(queries, 30)
    for q in stopped[:15]:  # some right away, some later
        session.terminate(q["id"])
    await wait_for(lambda: len({k[0] for k in ledger.finals}) >= at, 120, "the load to run")
    await fault()
    for q in stopped[15:]:
        session.terminate(q["id"])
    await asyncio.wait_for(pool.drain(), 120)
    assert not ledger.errors, ledger.errors[:3]
    for q in queries:
        for turn in expected_turns(q):
            assert ledger.finals[(q["id"], turn)] == 1, \
                f"{q['id']} turn {turn}: {ledger.finals[(q['id'], turn)]} finals"
    assert sum(ledger.finals.values()) == sum(len(expected_turns(q)) for q in queries)
    for key, visits in ledger.partials.items():
        assert visits == sorted(visits) and len(set(visits)) == len(visits), \
            f"partials of {key} went backwards: {visits}"
    return ledger


def test_members_spread_over_nodes_and_answer(cluster: Cluster, tmp_path: Path) -> None:
    async def go() -> tuple[list[dict[str, Any]], Ledger]:
        async with ray_pool(fake_recipe(tmp_path), 2) as pool:
            await wait_for(lambda: all(s.ready for s in pool.supervisor.slots), 60,
                           "both members ready")
            status = pool.status()
            ledger = Ledger()
            session = pool.session(ledger)
            for q in workload(random.Random(1), 40):
                session.submit(json.dumps(q))
            await asyncio.wait_for(pool.drain(), 60)
        return status, ledger

    status, ledger = asyncio.run(go())
    assert [m["state"] for m in status] == ["ready", "ready"]
    assert len({m["node"] for m in status}) == 2, status  # spread: one member per node
    assert all(m["gpu"] in ("0", "1") for m in status), status
    assert len(ledger.finals) > 40 and set(ledger.finals.values()) == {1}
    assert not fake_engines()


@pytest.mark.parametrize("fault", ["node", "actor-worker", "engine"])
def test_member_lost_under_load_loses_and_duplicates_nothing(
        cluster: Cluster, tmp_path: Path, fault: str) -> None:
    """A node removed without grace, the actor's worker process SIGKILLed, or the engine
    SIGKILLed, at a random moment while 520 queries flow: every turn gets exactly one final."""
    async def go() -> dict[str, int]:
        async with ray_pool(fake_recipe(tmp_path), 2) as pool:
            await wait_for(lambda: all(s.ready for s in pool.supervisor.slots), 60,
                           "both members ready")
            victim = pool.supervisor.slots[0].member
            assert isinstance(victim, RayMember) and victim.worker_pid and victim.pid

            async def strike() -> None:
                if fault == "node":
                    node = next(n for n in cluster.worker_nodes
                                if n.node_id == victim.node_id)
                    await asyncio.to_thread(cluster.remove_node, node, False)
                elif fault == "actor-worker":
                    os.kill(victim.worker_pid, signal.SIGKILL)  # type: ignore[arg-type]
                else:
                    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]

            await run_with_fault(pool, strike, seed={"node": 11, "actor-worker": 12, "engine": 13}[fault])
            counters = dict(pool.router.stats)
            restarts = sum(s.restarts for s in pool.supervisor.slots)
        return {**counters, "restarts": restarts}

    counts = asyncio.run(go())
    assert counts["restarts"] >= 1, counts
    assert not fake_engines(), processes.describe(fake_engines())


def test_member_without_a_free_gpu_waits_then_a_new_node_takes_it(
        cluster: Cluster, tmp_path: Path) -> None:
    """One GPU member more than the cluster has GPUs: it waits (not a crash); a node added
    later takes it, and Ray's accounting (also as `ray status` prints it) matches the members."""
    gpus = int(ray.cluster_resources()["GPU"])

    async def go() -> None:
        async with ray_pool(fake_recipe(tmp_path), gpus + 1) as pool:
            await wait_for(lambda: sum(s.state == "ready" for s in pool.supervisor.slots) == gpus,
                           60, "a member on every GPU")
            await asyncio.sleep(1.0)
            states = Counter(m["state"] for m in pool.status())
            assert states == {"ready": gpus, "waiting": 1}, states
            assert all(s.restarts == 0 for s in pool.supervisor.slots)
            assert ray.available_resources().get("GPU", 0) == 0
            assert _ray_status_gpus(cluster.address, (gpus, gpus)) == (gpus, gpus)
            node = cluster.add_node(num_cpus=1, num_gpus=2)  # (blocks the loop a moment)
            try:
                await wait_for(lambda: all(s.state == "ready" for s in pool.supervisor.slots),
                               60, "the waiting member to start on the new node")
                late = next(s for s in pool.supervisor.slots
                            if isinstance(s.member, RayMember) and s.member.node_id == node.node_id)
                ledger = Ledger()
                session = pool.session(ledger)
                for q in workload(random.Random(2), 60):
                    session.submit(json.dumps(q))
                await asyncio.wait_for(pool.drain(), 60)
                assert pool.router.load_of(late.index).visits_done > 0, "no work on the new node"
                want = (gpus + 1, gpus + 2)
                assert _ray_status_gpus(cluster.address, want) == want
            finally:
                await pool.close()
                await asyncio.to_thread(cluster.remove_node, node)

    asyncio.run(go())
    assert not fake_engines()


def _ray_status_gpus(address: str, expect: tuple[float, float]) -> tuple[float, float]:
    """GPUs used / total as `ray status` reports them, once it reports ``expect`` (its
    report is refreshed every few seconds), else the last it reported."""
    deadline = time.monotonic() + 30
    while True:
        text = subprocess.run([str(Path(sys.executable).with_name("ray")), "status",
                               f"--address={address}"], capture_output=True, text=True,
                              timeout=60).stdout
        found = re.search(r"([\d.]+)/([\d.]+) GPU", text)
        assert found, text
        seen = float(found.group(1)), float(found.group(2))
        if seen == expect or time.monotonic() > deadline:
            return seen
        time.sleep(1)


def test_real_katago_member_on_a_cpu_node(cluster: Cluster, kp: Katapool, tmp_path: Path) -> None:
    """End to end on the real engine: a CPU member (katapool_cpu) on a node of its own, its
    config generated there, answering real analysis through Ray."""
    node = cluster.add_node(num_cpus=1, num_gpus=0, resources={CPU_RESOURCE: 1})
    try:
        recipe = MemberRecipe(model=str(G170), preset="desktop")

        async def go() -> tuple[list[dict[str, Any]], Ledger]:
            async with ray_pool(recipe, 1, Placement(gpus=0)) as pool:
                ledger = Ledger()
                session = pool.session(ledger)
                for i, turns in enumerate(([0, 1, 2], [3])):
                    session.submit(json.dumps({
                        "id": f"real{i}", "moves": [["B", "D4"], ["W", "F6"], ["B", "C3"]],
                        "rules": "japanese", "komi": 6.5, "boardXSize": 9, "boardYSize": 9,
                        "analyzeTurns": turns, "maxVisits": 8}))
                await asyncio.wait_for(pool.drain(), 120)
                return pool.status(), ledger

        status, ledger = asyncio.run(go())
    finally:
        cluster.remove_node(node)
    assert status[0]["node"].split("/")[1] == node.node_id[:8]
    assert sorted(ledger.finals) == [("real0", 0), ("real0", 1), ("real0", 2), ("real1", 3)]
    assert set(ledger.finals.values()) == {1} and not ledger.errors


def test_daemon_on_the_cluster(cluster: Cluster, kp: Katapool, tmp_path: Path) -> None:
    """`katapool start --ray ADDRESS`: the pool file's members on the cluster's nodes, status
    and /metrics naming each member's node, queries over the Unix socket answered once."""
    cfg = tmp_path / "fake.cfg"
    cfg.write_text("logToStderr = false\n")
    (tmp_path / "katapool.yaml").write_text(
        f"engine: {json.dumps(str(FAKE))}\n"
        "listen:\n  websocket: 127.0.0.1:0\n"
        "models:\n  main:\n"
        f"    path: {json.dumps(str(G170))}\n    configs: [{json.dumps(str(cfg))}]\n"
        "    members: 2\n    placement: spread\n    resources: {GPU: 1}\n")
    with running_daemon(kp, tmp_path, "--config", str(tmp_path / "katapool.yaml"),
                        "--ray", cluster.address) as daemon:
        members = daemon.status["models"][0]["members"]
        assert len({m["node"] for m in members}) == 2, members
        assert all(m["node"] != "local" and m["gpu"] in ("0", "1") for m in members), members
        http = next(a for a in daemon.status["addresses"] if a.endswith("/metrics"))
        with urllib.request.urlopen(http, timeout=10) as r:
            metrics = r.read().decode()
        for m in members:
            assert f'node="{m["node"]}"' in metrics, m["node"]
        queries = workload(random.Random(3), 60)
        ledger = Ledger()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(daemon.socket))
            sock.sendall("".join(json.dumps(q) + "\n" for q in queries).encode())
            want = sum(len(expected_turns(q)) for q in queries)
            buffer = b""
            sock.settimeout(60)
            while sum(ledger.finals.values()) < want:
                chunk = sock.recv(1 << 16)
                assert chunk, "the daemon closed the connection"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    ledger(json.loads(line))
        # A rolling reload on the cluster: a changed model's members replaced one at a time.
        (tmp_path / "katapool.yaml").write_text(
            (tmp_path / "katapool.yaml").read_text() + "    preset: desktop\n")
        kp.run("reload", "--state-dir", str(daemon.state), check=True, timeout=120)
        after = control.request(daemon.socket, "katapool_status")["models"][0]["members"]
        assert [m["reloads"] for m in after] == [1, 1], after
        assert all(m["state"] == "ready" and m["node"] != "local" for m in after), after
    assert not ledger.errors
    assert all(ledger.finals[(q["id"], t)] == 1 for q in queries for t in expected_turns(q))
    assert not fake_engines()


def test_without_the_ray_extra_the_error_names_it(kp: Katapool, tmp_path: Path) -> None:
    """Ray hidden from the interpreter, as for a user without katapool[ray]."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    proc = kp.run("start", "--ray", "auto", "--state-dir", str(tmp_path / "state"),
                  env={"PYTHONPATH": str(hide)}, timeout=60)
    assert proc.returncode != 0
    assert "pip install 'katapool[ray]'" in proc.stderr, proc.stderr
    assert not (tmp_path / "state" / "socket").exists()
