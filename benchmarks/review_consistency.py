#!/usr/bin/env python3
"""Do the mistakes `katapool analyze` flags survive a deeper search?

    .venv/bin/python benchmarks/review_consistency.py [GAME.sgf] [--model M] [--visits 1]
        [--trust-visits 16] [--factor 4] [--checks 8] [--mistake 0.10]

Reviews the game as `katapool analyze` does (every position at --visits, then the --checks
largest swings re-searched at --trust-visits), then searches the positions around every
checked move again at --factor times --trust-visits. Prints one Markdown row per checked move
(its loss at each depth) and the share of flagged moves that are still mistakes at the deeper
search, ready for docs/performance.md. Search results depend on visits, not on the machine's
speed, so the figures do not change with a busy machine (only the time does).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from pathlib import Path

import psutil

from katapool.client.async_client import AsyncClient
from katapool.client.transport import EmbeddedChannel
from katapool.game.record import load_sgf
from katapool.pool import Pool
from katapool.review.batch import deepen, plan_checks, review_games

ROOT = Path(__file__).resolve().parents[1]


async def run(args: argparse.Namespace) -> None:
    record = load_sgf(args.game)
    pool = Pool.embedded(args.model, katago=args.katago, batch=True)
    began = time.monotonic()
    async with AsyncClient(EmbeddedChannel(pool, own=True)) as client:
        (review,) = await review_games(client, [(args.game, record)], args.visits,
                                       trust_visits=args.trust_visits)
        shallow = {m.number: m.winrate_loss for m in review.moves}
        plan = plan_checks([review], args.mistake / 2, args.checks)
        checked = sorted({t for _, turns in plan for t in turns})
        moves = sorted({t for t in checked if t - 1 in checked and t > 0})
        await deepen(client, plan)
        trusted = {m.number: m.winrate_loss for m in review.moves if review.is_trusted(m)}
        deep_visits = args.factor * args.trust_visits
        deep: dict[int, float] = {}
        evals = {}
        async for result in client.analyze_game(record, visits=deep_visits, turns=checked):
            assert result.root_info is not None
            evals[result.turn_number] = result.root_info.winrate
        for n in moves:
            sign = 1.0 if record.moves[n - 1][0] == "B" else -1.0
            deep[n] = sign * (evals[n - 1] - evals[n])
    seconds = time.monotonic() - began

    threshold = args.mistake
    print(f"game {args.game.name}, {len(record.moves)} moves; {platform.processor() or platform.machine()},"
          f" {psutil.cpu_count()} cores; {seconds:.0f} s in all\n")
    print(f"| move | loss at {args.visits} visit(s) | at {args.trust_visits} | at {deep_visits} "
          f"| flagged at {args.trust_visits} | still ≥ {threshold:.0%} at {deep_visits} |")
    print("|---|---|---|---|---|---|")
    for n in moves:
        flagged = trusted[n] >= threshold
        print(f"| {n} | {shallow[n]:+.1%} | {trusted[n]:+.1%} | {deep[n]:+.1%} | "
              f"{'yes' if flagged else 'no'} | {'yes' if deep[n] >= threshold else 'no'} |")
    flagged = [n for n in moves if trusted[n] >= threshold]
    kept = [n for n in flagged if deep[n] >= threshold]
    shallow_flags = [n for n in moves if shallow[n] >= threshold]
    shallow_kept = [n for n in shallow_flags if deep[n] >= threshold]
    print(f"\nflagged at {args.trust_visits} visits: {len(flagged)}; still mistakes at "
          f"{deep_visits}: {len(kept)} ({len(kept) / max(1, len(flagged)):.0%})")
    print(f"swings of {threshold:.0%}+ at {args.visits} visit(s) among the checked: "
          f"{len(shallow_flags)}; still mistakes at {deep_visits}: {len(shallow_kept)} "
          f"({len(shallow_kept) / max(1, len(shallow_flags)):.0%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("game", nargs="?", type=Path, default=ROOT / "examples" / "selfplay-b6c96.sgf")
    ap.add_argument("--katago")
    ap.add_argument("--model")
    ap.add_argument("--visits", type=int, default=1)
    ap.add_argument("--trust-visits", type=int, default=16)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--checks", type=int, default=8)
    ap.add_argument("--mistake", type=float, default=0.10)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
