#!/usr/bin/env python3
"""How fast `katapool review` analyses a game: positions/s and visits/s on this machine.

    .venv/bin/python benchmarks/review_speed.py [--model M] [--visits 1,2,8] [--sgf FILE]

Runs the real engine (the installed default, or --katago) through katapool's own config
generation and analysis engine, and prints one Markdown table row per visit count, with the
machine described, ready for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from pathlib import Path

import psutil

from katapool.config.build import build_config
from katapool.config.settings import Mode
from katapool.engine.analysis import AnalysisEngine
from katapool.engine.discovery import resolve_engine, resolve_model
from katapool.engine.probe import probe_version
from katapool.game.record import load_sgf
from katapool.review.game_review import review_game

ROOT = Path(__file__).resolve().parents[1]


async def measure(katago: Path, cfg: Path, model: Path, sgf: Path, visits: int) -> tuple[float, float]:
    record = load_sgf(sgf)
    engine = AnalysisEngine(katago, cfg, model, name="bench")
    began = time.monotonic()
    await engine.start()
    started = time.monotonic()
    try:
        await review_game(engine, record, visits)
    finally:
        await engine.close()
    return started - began, time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--katago")
    ap.add_argument("--model")
    ap.add_argument("--sgf", type=Path, default=ROOT / "examples" / "selfplay-b6c96.sgf")
    ap.add_argument("--visits", default="1,2")
    args = ap.parse_args()
    resolved = resolve_engine(args.katago)
    info = probe_version(resolved.path)
    model = resolve_model(args.model, resolved)
    built = build_config(mode=Mode.ANALYSIS, info=info, model=model)
    s = built.settings
    threads = s.numAnalysisThreads * s.numSearchThreadsPerAnalysisThread
    s.numAnalysisThreads, s.numSearchThreadsPerAnalysisThread = threads, 1  # as `review` does
    positions = len(load_sgf(args.sgf).moves) + 1
    cpu = built.report.cpu.name if built.report.cpu else platform.processor()
    print(f"machine: {cpu}, {psutil.cpu_count()} logical cores, "
          f"{psutil.virtual_memory().total >> 30} GiB; KataGo {info.version} {info.backend.label}; "
          f"tuning: {built.tuning.kind if built.tuning else 'n/a'}")
    print("| network | visits | positions | start-up s | analysis s | positions/s | visits/s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.cfg"
        cfg.write_text(s.render())
        for visits in (int(v) for v in args.visits.split(",")):
            startup, seconds = asyncio.run(measure(info.path, cfg, model, args.sgf, visits))
            print(f"| {model.name.split('.')[0]} | {visits} | {positions} | {startup:.1f} | "
                  f"{seconds:.1f} | {positions / seconds:.2f} | {positions * visits / seconds:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
