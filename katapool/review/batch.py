"""Review many games at once through a pool: every position of every game in flight together,
so the pool's members stay busy; results come back per game, per move.

A move is flagged only when the search behind both of its positions (before and after it)
reached ``trust_visits``: at a handful of visits the winrate of a position swings by tens of
percent between one visit and the next, and a "mistake" read from such numbers is mostly noise.
``deepen`` re-searches the positions around the largest swings at that depth.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from katapool.client.async_client import AsyncClient
from katapool.errors import KatapoolError
from katapool.game.record import GameRecord
from katapool.review.game_review import Evaluation, MoveReview

# Visits on both sides of a move before its loss is flagged. Measured on the sample game
# (docs/performance.md, "Which flagged mistakes survive a deeper search").
DEFAULT_TRUST_VISITS = 16


@dataclass
class GameReview:
    source: Path
    record: GameRecord
    evaluations: list[Evaluation] = field(default_factory=list)  # turn 0..N
    error: str | None = None  # the engine refused the game (an illegal move, ...)
    trust_visits: int = DEFAULT_TRUST_VISITS

    @property
    def positions(self) -> int:
        return len(self.record.moves) + 1

    @property
    def complete(self) -> bool:
        """Every position evaluated (an interrupted review may have only some)."""
        return len(self.evaluations) == self.positions

    @property
    def moves(self) -> list[MoveReview]:
        evals = self.evaluations
        return [MoveReview(i + 1, player, move, evals[i], evals[i + 1])
                for i, (player, move) in enumerate(self.record.moves)]

    def is_trusted(self, move: MoveReview) -> bool:
        return min(move.before.visits, move.after.visits) >= self.trust_visits

    def severity(self, move: MoveReview, threshold: float) -> str | None:
        """"blunder" (twice the threshold), "mistake", or None; only for trusted moves."""
        if move.winrate_loss < threshold or not self.is_trusted(move):
            return None
        return "blunder" if move.winrate_loss >= 2 * threshold else "mistake"

    def mistakes(self, threshold: float, top: int = 5) -> list[MoveReview]:
        """The biggest trusted losses (winrate given away) at or over ``threshold``."""
        worst = sorted((m for m in self.moves if self.severity(m, threshold)),
                       key=lambda m: -m.winrate_loss)
        return worst[:top]

    def unchecked(self, threshold: float) -> list[MoveReview]:
        """Losses over ``threshold`` that were not searched deep enough to be flagged."""
        return [m for m in self.moves if m.winrate_loss >= threshold and not self.is_trusted(m)]


async def review_games(client: AsyncClient, games: list[tuple[Path, GameRecord]], visits: int,
                       on_position: Callable[[], None] | None = None,
                       model: str | None = None,
                       trust_visits: int = DEFAULT_TRUST_VISITS) -> list[GameReview]:
    reviews = [GameReview(path, record, trust_visits=trust_visits) for path, record in games]
    await fill_reviews(client, reviews, visits, on_position, model)
    return reviews


async def fill_reviews(client: AsyncClient, reviews: list[GameReview], visits: int,
                       on_position: Callable[[], None] | None = None,
                       model: str | None = None) -> None:
    """Every position of every game at ``visits``, into the reviews as the results come: a
    review cut short (Ctrl-C) keeps what was done, and its finished games can still be written."""
    async def one(review: GameReview) -> None:
        try:
            async for evaluation in _evaluate(client, review.record, visits, None, model):
                review.evaluations.append(evaluation)
                if on_position:
                    on_position()
        except KatapoolError as exc:  # this game only: the others go on
            review.error = explain_engine_error(str(exc), review.record)

    await asyncio.gather(*(one(review) for review in reviews))


# KataGo counts the moves of a query from 0; a user reading "move 1" looks at the first move.
_ILLEGAL = re.compile(r"Illegal move (\d+): (\S+)")


def explain_engine_error(error: str, record: GameRecord) -> str:
    """The engine's words about a game, with an illegal move numbered as the record numbers it."""
    found = _ILLEGAL.search(error)
    if found is None or int(found.group(1)) >= len(record.moves):
        return error
    index = int(found.group(1))
    player, vertex = record.moves[index]
    return (f"move {index + 1} ({player} {vertex}) is illegal under {record.rules} rules; "
            f"the game cannot be replayed (KataGo: {error})")


def candidates(reviews: list[GameReview], threshold: float,
               limit: int) -> list[tuple[GameReview, MoveReview]]:
    """The largest untrusted swings of all games, largest first: what ``deepen`` checks."""
    found = [(r, m) for r in reviews if r.error is None for m in r.unchecked(threshold)]
    found.sort(key=lambda rm: -rm[1].winrate_loss)
    return found[:limit]


def plan_checks(reviews: list[GameReview], threshold: float,
                limit: int) -> list[tuple[GameReview, list[int]]]:
    """Per game, the turns (positions before and after the ``limit`` largest untrusted swings)
    still searched below the game's ``trust_visits``."""
    wanted: dict[int, tuple[GameReview, set[int]]] = {}
    for review, move in candidates(reviews, threshold, limit):
        wanted.setdefault(id(review), (review, set()))[1].update((move.number - 1, move.number))
    plan = []
    for review, turns in wanted.values():
        shallow = [t for t in sorted(turns) if review.evaluations[t].visits < review.trust_visits]
        if shallow:
            plan.append((review, shallow))
    return plan


async def deepen(client: AsyncClient, plan: list[tuple[GameReview, list[int]]],
                 on_position: Callable[[], None] | None = None,
                 model: str | None = None) -> None:
    """Re-search the planned positions at each game's ``trust_visits``."""
    async def one(review: GameReview, turns: list[int]) -> None:
        try:
            async for evaluation in _evaluate(client, review.record, review.trust_visits,
                                              turns, model):
                review.evaluations[evaluation.turn] = evaluation
                if on_position:
                    on_position()
        except KatapoolError as exc:
            review.error = explain_engine_error(str(exc), review.record)

    await asyncio.gather(*(one(review, turns) for review, turns in plan))


async def _evaluate(client: AsyncClient, record: GameRecord, visits: int, turns: list[int] | None,
                    model: str | None) -> AsyncIterator[Evaluation]:
    async for result in client.analyze_game(record, visits=visits, turns=turns, model=model):
        root = result.root_info
        if result.no_results or root is None:
            # Terminated (a server deadline, a stop): a gap, not a 50% position.
            raise KatapoolError(f"turn {result.turn_number} was not analysed (terminated)")
        yield Evaluation(turn=result.turn_number, winrate_black=root.winrate,
                         score_lead_black=root.score_lead, best_move=result.best_move,
                         visits=result.visits)
