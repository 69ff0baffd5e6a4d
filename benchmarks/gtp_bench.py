#!/usr/bin/env python3
"""Latency `katapool gtp` adds to simple commands; prints Markdown rows for docs/performance.md.

    .venv/bin/python benchmarks/gtp_bench.py [-n 500] [--model M]

Alternates `play`/`undo` pairs, one command at a time, between `katago gtp` and `katapool gtp`
running the same generated config (so drift hits both alike), and reports the p50/p90 of each
and the paired p50 difference. Uses the installed engine (`katapool engine install`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pool_bench import DEFAULT_MODEL, katago_path, machine


class Gtp:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0)
        self.ready = threading.Event()
        threading.Thread(target=self._err, daemon=True).start()
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            if b"GTP ready" in raw:
                self.ready.set()

    def ask(self, line: str) -> float:
        """Seconds from writing the command to reading its whole answer."""
        assert self.proc.stdin is not None
        began = time.perf_counter()
        self.proc.stdin.write(line.encode() + b"\n")
        got = b""
        while not got.endswith(b"\n\n"):
            got += self.stdout.read(65536)
        return time.perf_counter() - began

    def close(self) -> None:
        self.ask("quit")
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500, help="play/undo pairs per engine")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = ap.parse_args()
    cfg = Path(tempfile.mkdtemp(prefix="kp-gtp-bench-")) / "gtp.cfg"
    subprocess.run([sys.executable, "-m", "katapool", "config", "generate", "--mode", "gtp",
                    "--model", str(args.model), "-o", str(cfg)], check=True, capture_output=True)
    direct = Gtp([katago_path(), "gtp", "-config", str(cfg), "-model", str(args.model)])
    bridged = Gtp([sys.executable, "-m", "katapool", "gtp", "-config", str(cfg),
                   "-model", str(args.model)])
    for engine in (direct, bridged):
        engine.ready.wait(180)
        for _ in range(20):  # warm up
            engine.ask("play B Q16")
            engine.ask("undo")
    times: dict[str, dict[str, list[float]]] = {"play": {"d": [], "b": []}, "undo": {"d": [], "b": []}}
    for _ in range(args.n):
        for command, key in (("play B Q16", "play"), ("undo", "undo")):
            times[key]["d"].append(direct.ask(command))
            times[key]["b"].append(bridged.ask(command))
    direct.close()
    bridged.close()
    med = statistics.median
    print(f"machine: {machine()}")
    print("| command | n | katago gtp p50 ms | katapool gtp p50 ms | added p50 ms (paired) | "
          "katago p90 | katapool p90 |")
    print("|---|---|---|---|---|---|---|")
    for key, t in times.items():
        d, b = t["d"], t["b"]
        q = statistics.quantiles
        print(f"| {key} | {len(d)} | {med(d)*1e3:.3f} | {med(b)*1e3:.3f} | "
              f"{med(y - x for x, y in zip(d, b, strict=True))*1e3:.3f} | "
              f"{q(d, n=10)[-1]*1e3:.3f} | {q(b, n=10)[-1]*1e3:.3f} |")


if __name__ == "__main__":
    main()
