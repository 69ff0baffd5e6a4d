"""Analyse a whole game in one ``analyzeTurns`` query and tabulate it per move."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from katapool.engine.analysis import AnalysisEngine
from katapool.game.record import GameRecord
from katapool.protocol.analysis import is_final


@dataclass(frozen=True)
class Evaluation:
    """The engine's view of one position, from Black's point of view."""

    turn: int
    winrate_black: float
    score_lead_black: float
    best_move: str | None
    visits: int


@dataclass(frozen=True)
class MoveReview:
    number: int
    player: str
    move: str
    before: Evaluation
    after: Evaluation

    @property
    def winrate_loss(self) -> float:
        """Winrate the mover gave away with this move (positive is a loss)."""
        sign = 1.0 if self.player == "B" else -1.0
        return sign * (self.before.winrate_black - self.after.winrate_black)

    @property
    def score_loss(self) -> float:
        sign = 1.0 if self.player == "B" else -1.0
        return sign * (self.before.score_lead_black - self.after.score_lead_black)


def evaluation_from(response: dict[str, Any]) -> Evaluation:
    root = response.get("rootInfo", {})
    infos = response.get("moveInfos") or []
    best = min(infos, key=lambda m: m.get("order", 0))["move"] if infos else None
    return Evaluation(
        turn=int(response["turnNumber"]),
        winrate_black=float(root.get("winrate", 0.5)),
        score_lead_black=float(root.get("scoreLead", 0.0)),
        best_move=best,
        visits=int(root.get("visits", 0)),
    )


async def review_game(
    engine: AnalysisEngine,
    record: GameRecord,
    visits: int,
    on_turn: Callable[[Evaluation], None] | None = None,
) -> list[MoveReview]:
    """Every position of ``record`` analysed at ``visits``; the engine must report winrates
    as BLACK (katapool's generated configs do)."""
    turns = list(range(len(record.moves) + 1))
    query = record.query(analyzeTurns=turns, maxVisits=visits, includePolicy=False)
    evals: dict[int, Evaluation] = {}
    async for response in engine.query(query):
        if is_final(response) and "turnNumber" in response:
            ev = evaluation_from(response)
            evals[ev.turn] = ev
            if on_turn:
                on_turn(ev)
    return [
        MoveReview(i + 1, player, move, evals[i], evals[i + 1])
        for i, (player, move) in enumerate(record.moves)
    ]
