#!/usr/bin/env python3
"""How long `katapool prepare` takes, first run and again when nothing changed; prints
Markdown rows for docs/performance.md.

    .venv/bin/python benchmarks/prepare_bench.py [-n 5] [--model M] [--full]

Each figure is a whole CLI call (`python -m katapool prepare ...`, interpreter start-up
included), in a fresh data directory with the installed engine registered by path. The
second runs are the ones the test suite used to bound with "under 5 s": they only read the
recorded tuning (the tests check that they start no tuner and rewrite nothing). ``--full``
adds a real `katago tuner` run (7x7 board, batch 1, as the test suite's) and its no-op.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pool_bench import DEFAULT_MODEL, katago_path, machine


def timed(env: dict[str, str], *args: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "katapool", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    return time.perf_counter() - began


def row(what: str, seconds: list[float]) -> str:
    if len(seconds) == 1:
        return f"| {what} | 1 | {seconds[0]:.2f} | | |"
    return (f"| {what} | {len(seconds)} | {statistics.median(seconds):.2f} | "
            f"{min(seconds):.2f} | {max(seconds):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5, help="repeats of each no-op run")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--full", action="store_true", help="also a real tune (7x7, batch 1) and its no-op")
    args = ap.parse_args()
    katago = katago_path()
    print(f"machine: {machine()}; engine {katago}")
    print("| `katapool prepare` run | n | median s | min s | max s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="kp-prepare-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KATAPOOL_")}
        env.update(KATAPOOL_DATA_DIR=str(Path(tmp) / "data"), KATAPOOL_CACHE_DIR=str(Path(tmp) / "cache"))
        subprocess.run([sys.executable, "-m", "katapool", "engine", "install", "--path", katago],
                       env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)
        model = str(args.model)
        print(row("`--fast`, first (writes the reference tuning)",
                  [timed(env, "prepare", "--fast", "--model", model)]), flush=True)
        print(row("`--fast` again (nothing changed)",
                  [timed(env, "prepare", "--fast", "--model", model) for _ in range(args.n)]),
              flush=True)
        if args.full:
            print(row("full tune, 7x7, batch 1 (a real `katago tuner` run)",
                      [timed(env, "prepare", "--model", model, "--board-size", "7",
                             "--batch-size", "1")]), flush=True)
            print(row("`prepare` again after the full tune (nothing changed)",
                      [timed(env, "prepare", "--model", model) for _ in range(args.n)]), flush=True)


if __name__ == "__main__":
    main()
