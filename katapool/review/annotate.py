"""Write a reviewed game back as SGF: Sabaki's winrate/score properties on every node
(``SBKV`` Black's winrate in percent, ``SBKS`` Black's score lead), a comment on every move
with the engine's choice, the loss and the visits behind it, and SGF's bad-move mark (``BM``)
on the mistakes searched deep enough to be flagged."""

from __future__ import annotations

from pathlib import Path

from sgfmill import sgf

from katapool import __version__
from katapool.game.record import read_sgf_game
from katapool.review.batch import GameReview
from katapool.review.output import write_whole
from katapool.review.words import counted


def annotated_sgf(review: GameReview, mistake: float) -> bytes:
    game = read_sgf_game(review.record.sgf_bytes or review.source.read_bytes())
    nodes = list(game.get_main_sequence())
    evals = review.evaluations
    moves = review.moves
    # The position before the first move belongs to the last node without a move before it
    # (the root, or a setup node with handicap stones).
    first_move = next((i for i, n in enumerate(nodes) if n.get_move()[0] is not None), len(nodes))
    start = nodes[max(0, first_move - 1)] if first_move else nodes[0]
    _values(start, evals[0].winrate_black, evals[0].score_lead_black)
    move_index = 0
    for node in nodes[first_move:]:
        colour, _ = node.get_move()
        if colour is None:
            continue  # a comment-only node between moves: the previous move's values stand
        if move_index >= len(moves):
            break
        m = moves[move_index]
        move_index += 1
        _values(node, m.after.winrate_black, m.after.score_lead_black)
        who = "Black" if m.player == "B" else "White"
        depth = min(m.before.visits, m.after.visits)
        lines = [f"katapool ({counted(depth, 'visit')}): {who} winrate after {m.move}: "
                 f"{m.after.winrate_black if m.player == 'B' else 1 - m.after.winrate_black:.1%}, "
                 f"score {_lead(m.after.score_lead_black)}"]
        best = m.before.best_move
        if best and best.upper() != m.move.upper():
            lines.append(f"Engine's choice: {best}; this move {_change(m.winrate_loss, 'winrate')} "
                         f"and {_change(m.score_loss, 'points')}")
        elif best:
            lines.append("The engine's choice.")
        severity = review.severity(m, mistake)
        if severity:
            node.set("BM", 2 if severity == "blunder" else 1)
            lines[0] = f"{severity.capitalize()}. " + lines[0]
        old = node.get("C") if node.has_property("C") else ""
        node.set("C", (old + "\n\n" if old else "") + "\n".join(lines))
    root = game.get_root()
    root.set("AP", ("katapool", __version__))  # SGF's AP is the application and its version
    return bytes(game.serialise())


def _values(node: sgf.Tree_node, winrate_black: float, lead_black: float) -> None:
    node.set_raw("SBKV", f"{winrate_black * 100:.2f}".encode())
    node.set_raw("SBKS", f"{lead_black:.2f}".encode())


def _change(loss: float, what: str) -> str:
    """A loss as words: at few visits a move often seems to gain, and "lost -2.7 points" reads
    as a misprint."""
    amount = f"{abs(loss):.1%} winrate" if what == "winrate" else f"{abs(loss):.1f} points"
    return f"{'lost' if loss >= 0 else 'gained'} {amount}"


def _lead(lead_black: float) -> str:
    return f"B+{lead_black:.1f}" if lead_black >= 0 else f"W+{-lead_black:.1f}"


def write_annotated(review: GameReview, out: Path, mistake: float) -> Path:
    data = annotated_sgf(review, mistake)
    return write_whole(out, lambda fh: fh.write(data))
