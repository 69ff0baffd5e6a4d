#!/usr/bin/env python3
"""Daemon benchmarks; each prints Markdown rows for docs/performance.md.

    .venv/bin/python benchmarks/daemon_bench.py overhead   # daemon (socket, WebSocket) over direct katago
    .venv/bin/python benchmarks/daemon_bench.py ceiling    # the daemon alone, fake instant engine

`overhead` runs the installed engine with `--model` (default ../shared/models/g170-b6c96…):
one 1-visit query at a time, alternating between `katago analysis` on stdio and the daemon's
Unix socket and WebSocket, all with the same KataGo config. `ceiling` serves a FAKE engine
(benchmarks/fake_instant_katago.py, named as such) that answers at once, so only katapool's
own cost is measured.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pool_bench import DEFAULT_MODEL, FAKE, Engine, generated_config, katago_path, machine, positions


class Daemon:
    def __init__(self, pool_file: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kp-daemon-bench-"))
        (self.root / "katapool.yaml").write_text(pool_file)
        self.state = self.root / "state"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "katapool", "start", "--no-dashboard", "--log-level", "warning",
             "--config", str(self.root / "katapool.yaml"), "--state-dir", str(self.state)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from katapool.server import control

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                sock = Path((self.state / "socket").read_text().strip())
                status = control.request(sock, "katapool_status", timeout=5)
                members = [m for model in status["models"] for m in model["members"]]
                if all(m["state"] == "ready" for m in members):
                    self.socket = sock
                    self.ws = next(a for a in status["addresses"] if a.startswith("ws://"))
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise TimeoutError("daemon not ready")

    def close(self) -> None:
        subprocess.run([sys.executable, "-m", "katapool", "stop", "--state-dir", str(self.state)],
                       capture_output=True, timeout=120)


class UnixLines:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def send_many(self, objs: list[dict[str, Any]]) -> None:
        self.sock.sendall(b"".join(json.dumps(o).encode() + b"\n" for o in objs))

    def recv_lines(self, n: int) -> None:
        got = 0
        while got < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("daemon closed")
            got += chunk.count(b"\n")


class WsLines:
    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=600)

    def send(self, obj: dict[str, Any]) -> None:
        self.ws.send(json.dumps(obj))

    def send_many(self, objs: list[dict[str, Any]]) -> None:
        for start in range(0, len(objs), 100):  # frames of 100 newline-separated queries
            self.ws.send("\n".join(json.dumps(o) for o in objs[start:start + 100]))

    def recv_lines(self, n: int) -> None:
        got = 0
        while got < n:
            got += self.ws.recv().count("\n")


def _timed(send: Callable[[], None], wait: Callable[[], None]) -> float:
    began = time.perf_counter()
    send()
    wait()
    return time.perf_counter() - began


def bench_overhead(args: argparse.Namespace) -> None:
    cfg = generated_config(2, 1)
    pool_file = (f"models:\n  main:\n    path: {args.model}\n    configs: [{cfg}]\n"
                 "listen:\n  unix: default\n  websocket: 127.0.0.1:0\n")
    daemon = Daemon(pool_file)
    direct = Engine([katago_path(), "analysis", "-config", str(cfg), "-model", str(args.model)])
    direct.ready.wait(120)
    unix, ws = UnixLines(daemon.socket), WsLines(daemon.ws)
    # A fresh position for every query on every path: the daemon's members would otherwise
    # answer a position the other path just asked from their NN cache.
    stream = [{"id": f"q{i}", "moves": m, "rules": "chinese", "komi": 7.5, "boardXSize": 19,
               "boardYSize": 19, "maxVisits": 1} for i, m in enumerate(positions(3 * (args.n + 10)))]

    def via_direct(q: dict[str, Any]) -> float:
        n = len(direct.lines)
        return _timed(lambda: (direct.send(q), direct.flush()), lambda: direct.wait_lines(n + 1))

    def via(conn: UnixLines | WsLines, q: dict[str, Any]) -> float:
        return _timed(lambda: conn.send(q), lambda: conn.recv_lines(1))

    triples = [stream[i:i + 3] for i in range(0, len(stream), 3)]
    for a, b, c in triples[:10]:  # warm up all three
        via_direct(a), via(unix, b), via(ws, c)
    d, u, w = [], [], []
    for a, b, c in triples[10:]:  # one at a time, alternating, so drift hits all alike
        d.append(via_direct(a))
        u.append(via(unix, b))
        w.append(via(ws, c))
    direct.close()
    daemon.close()
    med = statistics.median
    print(f"machine: {machine()}")
    print("| queries | direct p50 ms | Unix socket p50 ms | overhead (paired p50) | "
          "WebSocket p50 ms | overhead (paired p50) |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(d)} each | {med(d)*1e3:.2f} | {med(u)*1e3:.2f} | "
          f"{med(b - a for a, b in zip(d, u, strict=True))*1e3:.2f} | {med(w)*1e3:.2f} | "
          f"{med(b - a for a, b in zip(d, w, strict=True))*1e3:.2f} |")


def bench_ceiling(args: argparse.Namespace) -> None:
    turns = 50
    pool_file = (f"engine: {FAKE}\nmodels:\n  main:\n    path: {args.model}\n"
                 "listen:\n  unix: default\n  websocket: 127.0.0.1:0\n"
                 "limits:\n  per_client_concurrency: 100000\n  max_queue: 100000\n")
    daemon = Daemon(pool_file)
    rows = []
    try:
        for name, conn in (("Unix socket", UnixLines(daemon.socket)), ("WebSocket", WsLines(daemon.ws))):
            queries = [{"id": f"q{i}", "moves": [["B", "Q16"], ["W", "D4"]] * 25,
                        "analyzeTurns": list(range(turns)), "maxVisits": 1} for i in range(args.n)]
            secs = _timed(lambda c=conn, q=queries: c.send_many(q),
                          lambda c=conn: c.recv_lines(args.n * turns))
            rows.append((name, secs))
    finally:
        daemon.close()
    print(f"machine: {machine()}")
    print("| endpoint | queries | turns each | responses | seconds | responses/s |")
    print("|---|---|---|---|---|---|")
    for name, secs in rows:
        print(f"| {name} | {args.n} | {turns} | {args.n * turns} | {secs:.2f} | "
              f"{args.n * turns / secs:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["overhead", "ceiling"])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("-n", type=int)
    args = ap.parse_args()
    args.n = args.n or {"overhead": 200, "ceiling": 1000}[args.which]
    {"overhead": bench_overhead, "ceiling": bench_ceiling}[args.which](args)


if __name__ == "__main__":
    main()
