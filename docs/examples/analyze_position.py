"""Analyse one position with a pool embedded in this process (no daemon needed).

    python docs/examples/analyze_position.py [network.bin.gz]
"""

import sys

from katapool.client import Client, Position

model = sys.argv[1] if len(sys.argv) > 1 else None  # default: the engine's bundled network
position = Position.from_moves(["Q16", "D4", "Q3", "C16"], komi=7.5, rules="chinese")

with Client.embedded(model) as client:
    result = client.analyze(position, visits=100, ownership=True)
    root = result.root_info
    assert root is not None
    print(f"{position.next_player} to play; best move {result.best_move}")
    print(f"Black winrate {root.winrate:.1%}, White winrate {root.winrate_for('W'):.1%}, "
          f"score lead (Black) {root.score_lead:+.1f}")
    for move in result.move_infos[:5]:
        print(f"  {move.move:>4}  visits {move.visits:4d}  winrate for {position.next_player} "
              f"{move.winrate_for(position.next_player):.1%}  pv {' '.join(move.pv[:6])}")
