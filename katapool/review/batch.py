"""Review many games at once through a pool: every position of every game in flight together,
so the pool's members stay busy; results come back per game, per move."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from katapool.client.async_client import AsyncClient
from katapool.errors import KatapoolError
from katapool.game.record import GameRecord
from katapool.review.game_review import Evaluation, MoveReview


@dataclass
class GameReview:
    source: Path
    record: GameRecord
    evaluations: list[Evaluation] = field(default_factory=list)  # turn 0..N
    error: str | None = None  # the engine refused the game (an illegal move, ...)

    @property
    def moves(self) -> list[MoveReview]:
        evals = self.evaluations
        return [MoveReview(i + 1, player, move, evals[i], evals[i + 1])
                for i, (player, move) in enumerate(self.record.moves)]

    def mistakes(self, threshold: float, top: int = 5) -> list[MoveReview]:
        """The biggest losses (winrate given away) at or over ``threshold``, largest first."""
        worst = sorted((m for m in self.moves if m.winrate_loss >= threshold),
                       key=lambda m: -m.winrate_loss)
        return worst[:top]


async def review_games(client: AsyncClient, games: list[tuple[Path, GameRecord]], visits: int,
                       on_position: Callable[[], None] | None = None,
                       model: str | None = None) -> list[GameReview]:
    async def one(path: Path, record: GameRecord) -> GameReview:
        review = GameReview(path, record)
        try:
            async for result in client.analyze_game(record, visits=visits, model=model):
                root = result.root_info
                if result.no_results or root is None:
                    # Terminated (a server deadline, a stop): a gap, not a 50% position.
                    review.error = f"turn {result.turn_number} was not analysed (terminated)"
                    return review
                review.evaluations.append(Evaluation(
                    turn=result.turn_number,
                    winrate_black=root.winrate if root else 0.5,
                    score_lead_black=root.score_lead if root else 0.0,
                    best_move=result.best_move, visits=result.visits))
                if on_position:
                    on_position()
        except KatapoolError as exc:  # this game only: the others go on
            review.error = str(exc)
        return review

    return list(await asyncio.gather(*(one(p, r) for p, r in games)))
