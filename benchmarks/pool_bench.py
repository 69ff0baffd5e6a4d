#!/usr/bin/env python3
"""Pool and router benchmarks; each prints Markdown rows for docs/performance.md.

    .venv/bin/python benchmarks/pool_bench.py overhead    # router latency over direct katago
    .venv/bin/python benchmarks/pool_bench.py throughput  # pool vs one KataGo, equal threads
    .venv/bin/python benchmarks/pool_bench.py game        # one whole-game query, same comparison
    .venv/bin/python benchmarks/pool_bench.py ceiling     # router alone, with a fake instant engine
    .venv/bin/python benchmarks/pool_bench.py recovery    # SIGKILL to answers elsewhere
    .venv/bin/python benchmarks/pool_bench.py failover    # SIGSTOP: detection to re-sent

Real-engine benchmarks use the installed engine (`katapool engine install`) and
`--model` (default: ../shared/models/g170-b6c96…).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT.parent / "shared" / "models" / "g170-b6c96-s175395328-d26788732.bin.gz"
FAKE = Path(__file__).with_name("fake_instant_katago.py")


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} logical cores, "
            f"{psutil.virtual_memory().total >> 30} GiB, Python {platform.python_version()}")


def positions(n: int, seed: int = 7) -> list[list[list[str]]]:
    """n distinct opening positions (legal: no point repeats)."""
    import random
    rng = random.Random(seed)
    cols = "ABCDEFGHJKLMNOPQRST"
    out = []
    for _ in range(n):
        used: set[str] = set()
        moves: list[list[str]] = []
        for i in range(rng.randint(6, 30)):
            while True:
                v = f"{rng.choice(cols[2:17])}{rng.randint(3, 17)}"
                if v not in used:
                    break
            used.add(v)
            moves.append(["B" if i % 2 == 0 else "W", v])
        out.append(moves)
    return out


class Engine:
    """A line-protocol child (katago analysis or katapool analysis) with a reader thread."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.ready = threading.Event()
        self.lines: list[tuple[float, bytes]] = []  # parsed only when read: keep the client cheap
        self.cond = threading.Condition()
        self.target = 1
        threading.Thread(target=self._stderr, daemon=True).start()
        threading.Thread(target=self._stdout, daemon=True).start()

    def _stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            if b"ready to begin handling requests" in raw:
                self.ready.set()

    def _stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append((time.perf_counter(), raw))
            if len(self.lines) >= self.target:
                with self.cond:
                    self.cond.notify_all()

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())

    def flush(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.flush()

    def wait_lines(self, n: int, timeout: float = 600) -> None:
        self.target = n
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.lines) >= n, timeout):
                raise TimeoutError(f"got {len(self.lines)} of {n} lines")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def katapool_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "katapool", "analysis", *args]


def katago_path() -> str:
    from katapool.engine.discovery import resolve_engine
    return str(resolve_engine().path)


def generated_config(threads_total: int, members: int) -> Path:
    """An analysis config giving each of `members` processes threads_total/members threads."""
    from katapool.config.build import build_config
    from katapool.config.settings import Mode
    from katapool.engine.probe import probe_version

    info = probe_version(Path(katago_path()))
    built = build_config(mode=Mode.ANALYSIS, info=info, model=DEFAULT_MODEL, preset="server",
                         members_on_machine=members)
    s = built.settings
    s.numAnalysisThreads = max(1, threads_total // members)
    s.numSearchThreadsPerAnalysisThread = 1
    path = Path(tempfile.mkdtemp(prefix="kp-bench-")) / f"t{threads_total}-m{members}.cfg"
    path.write_text(s.render())
    return path


def katago_vs_katapool(threads: int, model: str) -> list[tuple[str, list[str]]]:
    """Equal total threads: one KataGo process, or a pool of one-thread members."""
    return [
        (f"katago analysis, 1 process x {threads} threads",
         [katago_path(), "analysis", "-config", str(generated_config(threads, 1)), "-model", model]),
        (f"katapool analysis, {threads} members x 1 thread",
         katapool_argv("-config", str(generated_config(threads, threads)), "-model", model,
                       "--members", str(threads))),
    ]


def query(i: int, moves: list[list[str]], visits: int) -> dict[str, Any]:
    return {"id": f"q{i}", "moves": moves, "rules": "chinese", "komi": 7.5, "boardXSize": 19,
            "boardYSize": 19, "maxVisits": visits}


def latency(engine: Engine, q: dict[str, Any]) -> float:
    sent = time.perf_counter()
    n = len(engine.lines)
    engine.send(q)
    engine.flush()
    engine.wait_lines(n + 1)
    return engine.lines[n][0] - sent


def bench_overhead(args: argparse.Namespace) -> None:
    cfg = generated_config(2, 1)
    model = str(args.model)
    stream = [query(i, m, 1) for i, m in enumerate(positions(args.n))]
    direct = Engine([katago_path(), "analysis", "-config", str(cfg), "-model", model])
    pooled = Engine(katapool_argv("-config", str(cfg), "-model", model))
    for e in (direct, pooled):
        e.ready.wait(120)
        for q in stream[:10]:
            latency(e, q)  # warm up
    a, b = [], []
    for q in stream:  # one query at a time, alternating, so drift hits both alike
        a.append(latency(direct, q))
        b.append(latency(pooled, q))
    for e in (direct, pooled):
        e.close()
    pa, pb = statistics.median(a), statistics.median(b)
    print(f"machine: {machine()}")
    paired = statistics.median(y - x for x, y in zip(a, b, strict=True))
    print("| queries | direct p50 ms | katapool p50 ms | overhead p50 ms (paired) | direct p90 | "
          "katapool p90 |")
    print("|---|---|---|---|---|---|")
    q = statistics.quantiles
    print(f"| {len(stream)} | {pa*1e3:.2f} | {pb*1e3:.2f} | {(pb-pa)*1e3:.2f} ({paired*1e3:.2f}) | "
          f"{q(a, n=10)[-1]*1e3:.2f} | {q(b, n=10)[-1]*1e3:.2f} |")


def bench_throughput(args: argparse.Namespace) -> None:
    model = str(args.model)
    threads = args.threads
    stream = [query(i, m, args.visits) for i, m in enumerate(positions(args.n))]
    rows = []
    for label, argv in katago_vs_katapool(threads, model):
        began = time.perf_counter()
        e = Engine(argv)
        e.ready.wait(120)
        ready = time.perf_counter()
        for q in stream:
            e.send(q)
        e.flush()
        e.wait_lines(len(stream))
        done = time.perf_counter()
        e.close()
        rows.append((label, ready - began, done - ready, len(stream) / (done - ready)))
    print(f"machine: {machine()}; {len(stream)} positions x {args.visits} visits")
    print("| setup | start-up s | analysis s | positions/s | vs katago |")
    print("|---|---|---|---|---|")
    for label, start, secs, rate in rows:
        print(f"| {label} | {start:.1f} | {secs:.1f} | {rate:.2f} | {rate / rows[0][3]:.3f}x |")


def bench_game(args: argparse.Namespace) -> None:
    """One query for every position of the sample game: KataGo spreads it over its analysis
    threads; katapool splits it over its members."""
    from katapool.game.record import load_sgf

    record = load_sgf(ROOT / "examples" / "selfplay-b6c96.sgf")
    q = record.query(id="game", analyzeTurns=list(range(len(record.moves) + 1)),
                     maxVisits=args.visits)
    model = str(args.model)
    threads = args.threads
    rows = []
    for label, argv in katago_vs_katapool(threads, model):
        e = Engine(argv)
        e.ready.wait(120)
        began = time.perf_counter()
        e.send(q)
        e.flush()
        e.wait_lines(len(q["analyzeTurns"]))
        secs = time.perf_counter() - began
        e.close()
        rows.append((label, secs))
    print(f"machine: {machine()}; one query, {len(q['analyzeTurns'])} turns x {args.visits} visits")
    print("| setup | seconds | positions/s | vs katago |")
    print("|---|---|---|---|")
    for label, secs in rows:
        print(f"| {label} | {secs:.1f} | {len(q['analyzeTurns']) / secs:.2f} | "
              f"{rows[0][1] / secs:.3f}x |")


def bench_ceiling(args: argparse.Namespace) -> None:
    turns = 50
    n = args.n
    e = Engine(katapool_argv("--katago", str(FAKE), "-model", str(args.model)))
    e.ready.wait(60)
    began = time.perf_counter()
    for i in range(n):
        e.send({"id": f"q{i}", "moves": [["B", "Q16"], ["W", "D4"]] * 25,
                "analyzeTurns": list(range(turns)), "maxVisits": 1})
    e.flush()
    e.wait_lines(n * turns)
    secs = time.perf_counter() - began
    e.close()
    print(f"machine: {machine()}")
    print("| queries | turns each | responses | seconds | responses/s |")
    print("|---|---|---|---|---|")
    print(f"| {n} | {turns} | {n * turns} | {secs:.2f} | {n * turns / secs:,.0f} |")


def bench_recovery(args: argparse.Namespace) -> None:
    import asyncio

    from katapool.engine.probe import probe_version
    from katapool.pool import Pool, PoolPolicy
    from katapool.pool.launch import LaunchSpec, build_factories

    async def once(run: int) -> tuple[int, float, float, float]:
        info = probe_version(Path(katago_path()))
        spec = LaunchSpec(info=info, model=args.model, members=2, preset="server")
        with tempfile.TemporaryDirectory() as tmp:
            pool = Pool(build_factories(spec, Path(tmp)), PoolPolicy(backoff_initial=0.1),
                        version=info.version)
            finals: dict[str, float] = {}
            rerouted_at: list[float] = []
            original = pool.router.on_lost

            def on_lost(slot: Any, reason: str) -> None:
                original(slot, reason)
                rerouted_at.append(time.perf_counter())

            pool.router.on_lost = on_lost  # type: ignore[method-assign]
            async with pool:
                await pool.supervisor.wait_until_all_settled()
                s = pool.session(lambda m: finals.setdefault(m["id"], time.perf_counter())
                                 if m.get("isDuringSearch") is False else None)
                # A light load: the survivor has room, so the figure is katapool's, not the
                # engine's compute time for a backlog.
                for i, moves in enumerate(positions(args.n, seed=run)):
                    s.submit(json.dumps(query(i, moves, args.visits)))
                await asyncio.sleep(0.05)
                victim_slot = pool.supervisor.slots[0]
                on_victim = {f.client_id for f in pool.router.by_key.values()
                             if f.slot is victim_slot and f.client_id not in finals}
                pid = getattr(victim_slot.member, "pid", None)
                assert pid is not None
                killed = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                await pool.drain()
            if not on_victim:
                return 0, 0.0, 0.0, 0.0
            first = min(finals[q] for q in on_victim) - killed
            last = max(finals[q] for q in on_victim) - killed
            return len(on_victim), rerouted_at[0] - killed, first, last

    print(f"machine: {machine()}; {args.n} queries x {args.visits} visits over 2 members")
    print("| run | queries re-routed | kill to re-sent ms | kill to first answer s | "
          "kill to all answered s |")
    print("|---|---|---|---|---|")
    for run in range(args.runs):
        n, resent, first, last = asyncio.run(once(run))
        print(f"| {run + 1} | {n} | {resent * 1e3:.1f} | {first:.2f} | {last:.2f} |", flush=True)


def bench_failover(args: argparse.Namespace) -> None:
    """A member SIGSTOPped with queries on it (it ignores SIGTERM, as a process stuck in the
    kernel does): time from the supervisor's verdict to the queries re-sent to the other
    member. With ``--stuck-kill S`` its kill also takes S seconds (FAULT INJECTION: a process
    in uninterruptible sleep cannot be reaped sooner), to show that re-routing does not wait
    for it."""
    import asyncio

    from katapool.engine.probe import probe_version
    from katapool.pool import Pool, PoolPolicy
    from katapool.pool.launch import LaunchSpec, build_factories

    async def once(run: int) -> tuple[int, float, float, float]:
        info = probe_version(Path(katago_path()))
        spec = LaunchSpec(info=info, model=args.model, members=2, preset="server")
        policy = PoolPolicy(responsive_interval=0.2, responsive_deadline=0.5,
                            functional_interval=3600, backoff_initial=0.1)
        with tempfile.TemporaryDirectory() as tmp:
            factories = build_factories(spec, Path(tmp))

            def stuck_kill(slot: int, generation: int) -> Any:
                member = factories[slot](slot, generation)
                if slot == 0 and generation == 1 and args.stuck_kill:
                    real_kill = member.kill

                    async def kill() -> None:
                        await asyncio.sleep(args.stuck_kill)
                        await real_kill()
                    member.kill = kill  # type: ignore[method-assign]
                return member

            pool = Pool([stuck_kill, stuck_kill], policy, version=info.version)
            detected: list[float] = []
            resent: list[float] = []
            serve = pool.supervisor._serve

            async def timed_serve(slot: Any, member: Any) -> Any:
                reason = await serve(slot, member)
                detected.append(time.perf_counter())
                return reason

            pool.supervisor._serve = timed_serve  # type: ignore[method-assign]
            on_lost = pool.router.on_lost

            def timed_on_lost(slot: Any, reason: str) -> None:
                on_lost(slot, reason)
                resent.append(time.perf_counter())

            pool.router.on_lost = timed_on_lost  # type: ignore[method-assign]
            finals: dict[str, float] = {}
            async with pool:
                await pool.supervisor.wait_until_all_settled()
                victim = pool.supervisor.slots[0]
                pid = getattr(victim.member, "pid", None)
                assert pid is not None
                s = pool.session(lambda m: finals.setdefault(m["id"], time.perf_counter())
                                 if m.get("isDuringSearch") is False else None)
                os.kill(pid, signal.SIGSTOP)
                stopped = time.perf_counter()
                for i, moves in enumerate(positions(args.n, seed=run)):
                    s.submit(json.dumps(query(i, moves, args.visits)))
                await pool.drain()
                on_victim = pool.router.stats["rerouted"]
            return (on_victim, resent[0] - detected[0], detected[0] - stopped,
                    max(finals.values()) - stopped)

    kill = f"takes {args.stuck_kill:g} s" if args.stuck_kill else "as is"
    print(f"machine: {machine()}; {args.n} queries x {args.visits} visits over 2 members; "
          f"member 0 SIGSTOPped, its kill {kill}; responsive check every 0.2 s, deadline 0.5 s")
    print("| run | queries re-routed | detection to re-sent ms | SIGSTOP to detection s | "
          "SIGSTOP to all answered s |")
    print("|---|---|---|---|---|")
    for run in range(args.runs):
        n, resend, detect, done = asyncio.run(once(run))
        print(f"| {run + 1} | {n} | {resend * 1e3:.2f} | {detect:.2f} | {done:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["overhead", "throughput", "game", "ceiling", "recovery",
                                      "failover"])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("-n", type=int, default=None, help="number of queries")
    ap.add_argument("--visits", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--stuck-kill", type=float, default=0.0, metavar="S",
                    help="failover: the stopped member's kill takes S seconds")
    args = ap.parse_args()
    defaults = {"overhead": 200, "throughput": 40, "game": 1, "ceiling": 2000, "recovery": 4,
                "failover": 4}
    args.n = args.n or defaults[args.which]
    {"overhead": bench_overhead, "throughput": bench_throughput, "game": bench_game,
     "ceiling": bench_ceiling, "recovery": bench_recovery,
     "failover": bench_failover}[args.which](args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
