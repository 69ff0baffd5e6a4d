#!/usr/bin/env python3
"""Pool members on a Ray cluster: added latency, scale-out, recovery, and the issue's bar.

    .venv/bin/python benchmarks/cluster_bench.py latency  [-n 400]
    .venv/bin/python benchmarks/cluster_bench.py scaleout [-n 300] [--pace-ms 20]
    .venv/bin/python benchmarks/cluster_bench.py recovery [-n 500] [--repeat 3]
    .venv/bin/python benchmarks/cluster_bench.py daemon   [-n 500]

latency/scaleout/recovery simulate nodes on this machine with Ray's ``cluster_utils.Cluster``
(real Ray processes: a GCS, one raylet per node, actor workers); ``daemon`` does what a user
does: ``katapool ray head``, two ``katapool ray worker``, ``katapool start --ray``, 500
queries over the daemon's socket, one worker node's raylet SIGKILLed mid-load.
The engines are FAKE ENGINES named as such (``fake_instant_katago.py``: answers at once, so
only katapool and Ray are measured; ``fake_paced_katago.py``: a fixed cost per turn, so
scale-out is the cluster's, not the engine's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from katapool.cluster.member import Placement, RayMember  # noqa: E402
from katapool.cluster.recipe import MemberRecipe  # noqa: E402
from katapool.pool import LocalMember, Pool, PoolPolicy  # noqa: E402

INSTANT = ROOT / "benchmarks" / "fake_instant_katago.py"
PACED = ROOT / "benchmarks" / "fake_paced_katago.py"
SHARED = Path(os.environ.get("KATAPOOL_SHARED_DIR") or ROOT.parent / "shared")
MODEL = SHARED / "models" / "g170-b6c96-s175395328-d26788732.bin.gz"
POLICY = PoolPolicy(backoff_initial=0.05)


def machine() -> str:
    return (f"{platform.node()}: {psutil.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.processor() or platform.machine()}")


def query(i: int, turns: list[int] | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"id": f"b{i}", "moves": [["B", "D4"], ["W", "F6"]], "rules": "chinese",
                         "komi": 7.5, "boardXSize": 9, "boardYSize": 9, "maxVisits": 1}
    if turns:
        q["analyzeTurns"] = turns
    return q


def recipe(engine: Path, tmp: Path, pace_ms: int = 20) -> MemberRecipe:
    cfg = tmp / "fake.cfg"
    cfg.write_text("logToStderr = false\n")
    return MemberRecipe(katago=str(engine), model=str(MODEL), configs=(str(cfg),),
                        env={"FAKE_PACE_MS": str(pace_ms)})


@contextlib.contextmanager
def simulated(nodes: int, gpus_per_node: int = 1) -> Iterator[Any]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                            "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1, num_gpus=gpus_per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="katapool-bench", log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def ray_pool(r: MemberRecipe, members: int) -> Pool:
    def make(slot: int, generation: int) -> RayMember:
        return RayMember(f"member-{slot}", r, Placement(gpus=1))
    return Pool([make] * members, POLICY)


async def one_at_a_time(pool: Pool, n: int) -> list[float]:
    done = asyncio.Event()
    session = pool.session(lambda msg: done.set() if msg.get("isDuringSearch") is False else None)
    out = []
    for i in range(n):
        done.clear()
        start = time.perf_counter()
        session.submit(json.dumps(query(i)))
        await done.wait()
        out.append((time.perf_counter() - start) * 1000)
    return out


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(p * len(values)))]


def cmd_latency(args: argparse.Namespace) -> None:
    """The same one-at-a-time queries through a local member and through a Ray member."""
    with tempfile.TemporaryDirectory() as tmp, simulated(1):
        r = recipe(INSTANT, Path(tmp))

        async def go() -> tuple[list[float], list[float]]:
            local = Pool([lambda s, g: LocalMember(f"member-{s}", [sys.executable, str(INSTANT),
                                                                    "analysis"])], POLICY)
            async with local, ray_pool(r, 1) as remote:
                await remote.supervisor.wait_until_all_settled()
                await one_at_a_time(local, 50)  # warm both
                await one_at_a_time(remote, 50)
                a, b = [], []
                for _ in range(4):  # interleaved rounds: the machine's load hits both alike
                    a += await one_at_a_time(local, args.n // 4)
                    b += await one_at_a_time(remote, args.n // 4)
                return a, b

        local_ms, ray_ms = asyncio.run(go())
    print(f"machine: {machine()}")
    print("| member | n | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|")
    for name, v in (("local (pipe)", local_ms), ("Ray actor", ray_ms)):
        print(f"| {name} | {len(v)} | {statistics.median(v):.2f} | {pct(v, .9):.2f} | "
              f"{pct(v, .99):.2f} |")
    print(f"added by Ray, p50: {statistics.median(ray_ms) - statistics.median(local_ms):.2f} ms "
          f"(target <= 5 ms)")


async def throughput(pool: Pool, n: int) -> float:
    finals = 0
    session = pool.session(lambda msg: None)

    def count(msg: dict[str, Any]) -> None:
        nonlocal finals
        finals += msg.get("isDuringSearch") is False
    session.deliver = count
    start = time.perf_counter()
    for i in range(n):
        session.submit(json.dumps(query(i)))
    await pool.drain()
    assert finals == n, finals
    return time.perf_counter() - start


def cmd_scaleout(args: argparse.Namespace) -> None:
    """Fixed-cost queries (the paced fake: --pace-ms each) on 1, 2 and 3 nodes, a member each."""
    rows = []
    for nodes in (1, 2, 3):
        with tempfile.TemporaryDirectory() as tmp, simulated(nodes):
            r = recipe(PACED, Path(tmp), args.pace_ms)

            async def go(k: int = nodes, r: MemberRecipe = r) -> float:
                async with ray_pool(r, k) as pool:
                    await pool.supervisor.wait_until_all_settled()
                    await throughput(pool, 20)  # warm
                    return min([await throughput(pool, args.n) for _ in range(2)])

            rows.append((nodes, asyncio.run(go())))
    print(f"machine: {machine()}")
    print(f"{args.n} queries of {args.pace_ms} ms each (fake paced engine), one member per node")
    print("| nodes | seconds | queries/s | speed-up |\n|---|---|---|---|")
    for nodes, secs in rows:
        print(f"| {nodes} | {secs:.2f} | {args.n / secs:.0f} | {rows[0][1] / secs:.2f}x |")


def cmd_recovery(args: argparse.Namespace) -> None:
    """A node lost under load: when katapool sees the member lost, and when every turn has
    been answered. ``kill``: the node's raylet, actor workers and engines SIGKILLed at once
    (a crash: connections reset). ``freeze``: all of them SIGSTOPped (a silent node: a power
    cut or a network partition, found only by health checks), SIGKILLed afterwards."""
    print(f"machine: {machine()}")
    print("| fault | run | queries | lost | duplicated | member replaced after s | all answered after s |")
    print("|---|---|---|---|---|---|---|")
    for fault in args.faults.split(","):
        for run in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp, simulated(3):
                r = recipe(PACED, Path(tmp), args.pace_ms)
                result = asyncio.run(_recovery_once(r, args.n, fault))
            print(f"| {fault} | {run + 1} | {args.n} | {result['lost']} | {result['duplicated']} | "
                  f"{result['detected']:.2f} | {result['answered']:.2f} |", flush=True)


async def _recovery_once(r: MemberRecipe, n: int, fault: str) -> dict[str, float]:
    finals: Counter[str] = Counter()
    times: dict[str, float] = {}
    async with ray_pool(r, 2) as pool:
        await pool.supervisor.wait_until_all_settled()
        session = pool.session(lambda m: None)

        def deliver(msg: dict[str, Any]) -> None:
            if msg.get("isDuringSearch") is False:
                finals[f"{msg['id']}/{msg['turnNumber']}"] += 1
                times[f"{msg['id']}/{msg['turnNumber']}"] = time.perf_counter()
        session.deliver = deliver
        for i in range(n):
            session.submit(json.dumps(query(i, [0, 1, 2] if i % 4 == 0 else None)))
        want = sum(3 if i % 4 == 0 else 1 for i in range(n))
        while sum(finals.values()) < want // 3:
            await asyncio.sleep(0.01)
        victim = pool.supervisor.slots[0].member
        assert isinstance(victim, RayMember)
        raylet = psutil.Process(_raylet_of(victim.node_id))
        node = [raylet, *raylet.children(recursive=True)]
        lost_at: list[float] = []
        killed = time.perf_counter()
        for p in node:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        while not lost_at:
            if not victim.alive or pool.supervisor.slots[0].member is not victim:
                lost_at.append(time.perf_counter())
            await asyncio.sleep(0.005)
        await pool.drain()
        for p in node:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
    answered = max(times.values())
    return {"lost": want - len(finals), "duplicated": sum(c - 1 for c in finals.values()),
            "detected": lost_at[0] - killed, "answered": answered - killed}


def _raylet_of(node_id: str) -> int:
    import ray
    node = next(x for x in ray.nodes() if x["NodeID"] == node_id)
    sock = node["RayletSocketName"]
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("raylet") and any(sock in c for c in cmd):
            return p.pid
    raise RuntimeError(f"no raylet for node {node_id}")


# --- the bar, as a user runs it --------------------------------------------------------------

def cmd_daemon(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kp-cluster-"))
    env = {**os.environ, "RAY_TMPDIR": str(tmp / "ray")}
    kp = [sys.executable, "-m", "katapool"]
    port = _free_port()
    address = f"127.0.0.1:{port}"
    started: list[subprocess.Popen[bytes]] = []
    t0 = time.perf_counter()
    try:
        subprocess.run([*kp, "ray", "head", "--port", str(port)], env=env, check=True,
                       capture_output=True)
        for _ in range(2):
            subprocess.run([*kp, "ray", "worker", "--address", address, "--gpus", "0",
                            "--no-prepare"], env=env, check=True, capture_output=True)
        print(f"head + 2 worker nodes up in {time.perf_counter() - t0:.1f} s")
        (tmp / "fake.cfg").write_text("logToStderr = false\n")
        (tmp / "katapool.yaml").write_text(
            f"engine: {json.dumps(str(PACED))}\nmodels:\n  main:\n"
            f"    path: {json.dumps(str(MODEL))}\n    configs: [{json.dumps(str(tmp / 'fake.cfg'))}]\n"
            "    members: 2\n    placement: spread\n")
        state = tmp / "state"
        daemon = subprocess.Popen([*kp, "start", "--config", str(tmp / "katapool.yaml"), "--ray",
                                   address, "--state-dir", str(state), "--no-dashboard"],
                                  env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / "daemon.log", "wb"))  # noqa: SIM115
        started.append(daemon)
        members = _wait_ready(state, 2)
        print("members:", ", ".join(f"{m['name']} on {m['node']} gpu {m['gpu']}" for m in members))
        result = _daemon_load(state, args.n, address, members)
        print(f"{args.n} queries ({result['turns']} turns), worker node {result['victim']} "
              f"(its raylet, actor workers and engines) SIGKILLed after {result['before']} "
              f"finals: lost {result['lost']}, duplicated "
              f"{result['duplicated']}, errors {result['errors']}; all answered "
              f"{result['after']:.2f} s after the kill")
    finally:
        for p in started:
            p.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(60)
        subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"],
                       env=env, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(state: Path, members: int) -> list[dict[str, Any]]:
    from katapool.server import control
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            sock = Path((state / "socket").read_text().strip())
            status = control.request(sock, "katapool_status", timeout=5)
            found = [m for model in status["models"] for m in model["members"]]
            if len(found) == members and all(m["state"] == "ready" for m in found):
                return found
        time.sleep(0.5)
    raise RuntimeError("the daemon's members were not ready within 180 s")


def _daemon_load(state: Path, n: int, address: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    victim_node = members[0]["node"]
    node_id = victim_node.split("/")[1]
    raylet = None
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("raylet") and any(f"--node_id={node_id}" in c for c in cmd):
            raylet = p.pid
    if raylet is None:  # older Ray: ask Ray for the node's raylet socket
        import ray
        ray.init(address=address, log_to_driver=False)
        full = next(x["NodeID"] for x in ray.nodes() if x["NodeID"].startswith(node_id))
        raylet = _raylet_of(full)
        ray.shutdown()
    sock_path = Path((state / "socket").read_text().strip())
    queries = [query(i, [0, 1, 2] if i % 4 == 0 else None) for i in range(n)]
    want = {f"b{i}/{t}" for i, q in enumerate(queries) for t in (q.get("analyzeTurns") or [2])}
    finals: Counter[str] = Counter()
    errors = 0
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock_path))
        s.settimeout(120)
        s.sendall("".join(json.dumps(q) + "\n" for q in queries).encode())
        buffer, killed_at, before = b"", 0.0, 0
        while sum(finals.values()) < len(want) or not killed_at:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "error" in msg:
                    errors += 1
                elif msg.get("isDuringSearch") is False:
                    finals[f"{msg['id']}/{msg['turnNumber']}"] += 1
            if not killed_at and sum(finals.values()) >= len(want) // 3:
                before = sum(finals.values())
                node = psutil.Process(raylet)
                for p in [node, *node.children(recursive=True)]:  # the node's every process
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                killed_at = time.perf_counter()
        after = time.perf_counter() - killed_at
    return {"turns": len(want), "victim": victim_node, "before": before,
            "lost": len(want - set(finals)), "duplicated": sum(c - 1 for c in finals.values()),
            "errors": errors, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, n in (("latency", 400), ("scaleout", 300), ("recovery", 500), ("daemon", 500)):
        p = sub.add_parser(name)
        p.add_argument("-n", type=int, default=n)
        p.add_argument("--pace-ms", type=int, default=20)
        p.add_argument("--repeat", type=int, default=3)
        p.add_argument("--faults", default="kill,freeze")
    args = parser.parse_args()
    {"latency": cmd_latency, "scaleout": cmd_scaleout, "recovery": cmd_recovery,
     "daemon": cmd_daemon}[args.cmd](args)


if __name__ == "__main__":
    main()
