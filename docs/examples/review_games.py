"""Review games through a daemon and print each game's three biggest mistakes.

    python docs/examples/review_games.py game1.sgf game2.sgf
"""

import sys
from pathlib import Path

from katapool.client import Client
from katapool.game.record import load_sgf

with Client.connect() as client:
    for name in sys.argv[1:]:
        record = load_sgf(Path(name))
        results = list(client.analyze_game(record, visits=32))
        losses = []
        for n, (player, vertex) in enumerate(record.moves, start=1):
            before, after = results[n - 1].root_info, results[n].root_info
            assert before and after
            lost = before.winrate_for(player) - after.winrate_for(player)  # type: ignore[arg-type]
            losses.append((lost, n, player, vertex, results[n - 1].best_move))
        print(name)
        for lost, n, player, vertex, best in sorted(losses, reverse=True)[:3]:
            print(f"  move {n} {player} {vertex}: -{lost:.1%} (engine: {best})")
