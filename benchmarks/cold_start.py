#!/usr/bin/env python3
"""Cold start: how long a GUI waits for its first answer, `katapool` against plain `katago`.

    .venv/bin/python benchmarks/cold_start.py [-n 10] [--model M] [--modes gtp,analysis]
    .venv/bin/python benchmarks/cold_start.py --importtime   # where katapool's imports go

Each start is a new process (the OS file cache is warm: one discarded start per command
first, which also fills katapool's on-disk caches as any launch after the first finds them).
The clock runs from spawn to the first answer:

* gtp: `name` is written at once, as GUIs do (Sabaki, Lizzie: `name`, `version`, ...); KataGo
  reads it only after the network is loaded, so its answer is what the GUI waits for.
* analysis: one query with `maxVisits` 1 is written at once; the clock stops at its answer.

`--fresh-caches` gives every katapool start an empty cache directory instead: the first start
after an install or any change, when katapool probes the engine and generates the config.

Plain `katago` runs the config katapool generates for that command (`katapool config generate`
with the command's preset and mode), so the engine's own work is identical; the two
alternate start by start, so drift on a shared machine hits both alike. Prints Markdown rows
for docs/performance.md: p50/p90 per command, the added p50 (katapool p50 - katago p50) and
the paired added p50 (the median of each katapool start minus the katago start beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pool_bench import DEFAULT_MODEL, katago_path, machine

ROOT = Path(__file__).resolve().parents[1]
# The preset each command generates its config with (katapool/cli/gtp_cmd.py, analysis_cmd.py).
PRESET = {"gtp": "desktop", "analysis": "server"}
QUERY = {"id": "cold", "moves": [], "rules": "tromp-taylor", "komi": 7.5,
         "boardXSize": 19, "boardYSize": 19, "maxVisits": 1}
HEAVY = ("numpy", "onnx", "onnxruntime", "matplotlib")


def katapool_argv() -> list[str]:
    return [sys.executable, "-m", "katapool"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            **extra}


def generate_config(mode: str, model: Path, out: Path) -> Path:
    subprocess.run([*katapool_argv(), "config", "generate", "--mode", mode, "--preset", PRESET[mode],
                    "--model", str(model), "-o", str(out)],
                   check=True, capture_output=True, env=_env())
    return out


def _first_answer(argv: list[str], first_line: str, done: Callable[[bytes], bool],
                  last_line: str | None, env: dict[str, str], timeout: float = 300.0) -> float:
    """Seconds from spawn to the end of the answer ``done`` recognises; then the process is
    told to stop (``last_line``, then end of input) and waited for."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, bufsize=0, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(first_line.encode() + b"\n")
    got = b""
    deadline = began + timeout
    try:
        while not done(got):
            chunk = proc.stdout.read(65536)  # unbuffered: what is there, at once
            if not chunk or time.perf_counter() > deadline:
                raise RuntimeError(f"{argv[0]}: no answer (got {got[-300:]!r})")
            got += chunk
        elapsed = time.perf_counter() - began
    finally:
        try:
            if last_line:
                proc.stdin.write(last_line.encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return elapsed


def _gtp_answered(data: bytes) -> bool:
    return data.startswith((b"=", b"?")) and b"\n\n" in data


def _analysis_answered(data: bytes) -> bool:
    for line in data.splitlines(keepends=True):
        if line.endswith(b"\n") and b'"cold"' in line and b'"warning"' not in line:
            return True
    return False


def start_gtp(argv: list[str], env: dict[str, str]) -> float:
    return _first_answer(argv, "name", _gtp_answered, "quit", env)


def start_analysis(argv: list[str], env: dict[str, str]) -> float:
    return _first_answer(argv, json.dumps(QUERY), _analysis_answered, None, env)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(mode: str, n: int, model: Path, katago: str, tmp: Path,
            fresh_caches: bool = False) -> dict[str, object]:
    """``fresh_caches``: every katapool start gets an empty cache directory, as the first
    start after an install or any change does (its probes and start cache are empty)."""
    cfg = generate_config(mode, model, tmp / f"{mode}.cfg")
    plain = [katago, mode, "-config", str(cfg), "-model", str(model)]
    ours = [*katapool_argv(), mode, "-model", str(model)]
    start = start_gtp if mode == "gtp" else start_analysis
    runs = iter(range(1 << 30))

    def env(name: str) -> dict[str, str]:
        if fresh_caches and name == "katapool":
            return _env(KATAPOOL_CACHE_DIR=str(tmp / f"cache-{mode}-{next(runs)}"))
        return _env()

    first = {"katago": start(plain, env("katago")), "katapool": start(ours, env("katapool"))}
    times: dict[str, list[float]] = {"katago": [], "katapool": []}
    for i in range(n):
        # Alternate which goes first, so neither always follows the other's exit.
        order = [("katago", plain), ("katapool", ours)]
        for name, argv in order if i % 2 == 0 else order[::-1]:
            times[name].append(start(argv, env(name)))
            print(f"  {mode} {name} #{i + 1}: {times[name][-1]:.3f} s", file=sys.stderr)
    return {"mode": mode, "n": n, "first": first, "times": times, "fresh_caches": fresh_caches}


def print_rows(results: list[dict[str, object]], load: tuple[float, float]) -> None:
    print(f"machine: {machine()}; load average {load[0]:.2f} before, {load[1]:.2f} after")
    print("| command | n | katago p50 s | katago p90 s | katapool p50 s | katapool p90 s | "
          "added p50 s | paired added p50 s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        times = r["times"]
        assert isinstance(times, dict)
        k, p = times["katago"], times["katapool"]
        added = statistics.median(p) - statistics.median(k)
        # Each katapool start against the katago start beside it: less drift from other load.
        paired = statistics.median(b - a for a, b in zip(k, p, strict=True))
        label = f"{r['mode']} (fresh caches)" if r.get("fresh_caches") else r["mode"]
        print(f"| {label} | {r['n']} | {statistics.median(k):.2f} | {pct(k, 0.9):.2f} | "
              f"{statistics.median(p):.2f} | {pct(p, 0.9):.2f} | {added:+.2f} | {paired:+.2f} |")
    for r in results:
        first = r["first"]
        assert isinstance(first, dict)
        print(f"warm-up start ({r['mode']}, not counted): katago {first['katago']:.2f} s, "
              f"katapool {first['katapool']:.2f} s")


def importtime(mode: str, model: Path, top: int) -> None:
    """One `katapool <mode>` start under `-X importtime`: the heaviest top-level imports,
    and whether any heavy library was loaded."""
    argv = [sys.executable, "-X", "importtime", "-m", "katapool", mode, "-model", str(model)]
    first = "name\nquit\n" if mode == "gtp" else json.dumps(QUERY) + "\n"
    proc = subprocess.run(argv, input=first, capture_output=True, text=True, timeout=300,
                          env=_env())
    rows = []  # (self us, cumulative us, name)
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), m.group(4)))
    # Self times summed per top-level package: where the import time goes, whoever asked.
    by_package: dict[str, int] = {}
    for self_us, _, name in rows:
        root = name.split(".")[0]
        by_package[root] = by_package.get(root, 0) + self_us
    total = sum(by_package.values())
    print(f"katapool {mode}: {total / 1e6:.3f} s of imports (under -X importtime, which inflates it)")
    for root, us in sorted(by_package.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {us / 1e3:8.1f} ms  {root}")
    print(f"  heavy libraries imported: {', '.join(h for h in HEAVY if h in by_package) or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10, help="counted starts per command and program")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--modes", default="gtp,analysis")
    ap.add_argument("--importtime", action="store_true", help="show where import time goes")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--fresh-caches", action="store_true",
                    help="each katapool start with empty caches (a first start after a change)")
    ap.add_argument("--json", type=Path, help="also write the raw times here")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.importtime:
        for mode in modes:
            importtime(mode, args.model, args.top)
        return
    katago = katago_path()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kp-cold-") as tmp:
        results = [measure(mode, args.n, args.model, katago, Path(tmp), args.fresh_caches)
                   for mode in modes]
    print_rows(results, (load_before, os.getloadavg()[0]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
