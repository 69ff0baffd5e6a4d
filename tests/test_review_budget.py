"""The review's time budget and its rule for flagging mistakes, without an engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from katapool.game.record import GameRecord
from katapool.review.batch import GameReview, candidates, plan_checks
from katapool.review.budget import Speed, format_duration, parse_duration, plan_review
from katapool.review.game_review import Evaluation


@pytest.mark.parametrize(("text", "seconds"), [
    ("300", 300), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("2.5m", 150), (" 6M ", 360)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5 minutes", "5m3", "-5", "0s", "nan", "inf", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(42.4) == "42 s"
    assert format_duration(65) == "1 min 05 s"
    assert format_duration(3725) == "1 h 02 min"


def _speed(rate: float) -> Speed:
    return Speed(rate, 8, 2, 16 / rate)


def test_slow_engine_gets_one_visit_and_checks_with_the_rest() -> None:
    # KaTrain's b10c384 on PoCL, 2 cores: about 1.5 visits/s; the demo's 249 positions, 6 min.
    plan = plan_review(249, _speed(1.5), 340, trust_visits=16, wanted_checks=249)
    assert plan.visits == 1
    assert plan.checks == int((340 * 1.5 - 249) // 32)  # what is left, 2 positions × 16 each
    assert plan.estimate <= 340
    assert "1 visit per position" in plan.reason and f"{plan.checks} largest swings" in plan.reason


def test_fast_engine_searches_everything_deep_enough() -> None:
    plan = plan_review(249, _speed(2000), 60, trust_visits=16, wanted_checks=249)
    assert plan.checks == 0 and plan.visits == int(60 * 2000 / 249) >= 16
    assert plan.estimate <= 60


def test_middle_engine_splits_the_budget() -> None:
    plan = plan_review(249, _speed(40), 60, trust_visits=16, wanted_checks=249)
    assert 1 < plan.visits < 16 and plan.checks > 0
    assert plan.estimate <= 60 + 1e-6
    assert plan_review(249, _speed(40), 60, 16, wanted_checks=3).checks == 3  # --checks caps it


def test_too_slow_for_the_budget_says_so() -> None:
    plan = plan_review(249, _speed(0.2), 60, trust_visits=16, wanted_checks=249)
    assert plan.visits == 1 and plan.checks == 0
    assert plan.estimate > 60 and "no move will be flagged" in plan.reason


def _review(winrates: list[float], visits: list[int], trust: int = 16) -> GameReview:
    moves = [("B" if i % 2 == 0 else "W", "D4") for i in range(len(winrates) - 1)]
    record = GameRecord(size=19, komi=7.5, rules="japanese", moves=moves)
    evals = [Evaluation(t, w, 0.0, "Q16", v) for t, (w, v) in enumerate(zip(winrates, visits,
                                                                            strict=True))]
    return GameReview(Path("g.sgf"), record, evals, trust_visits=trust)


def test_only_moves_searched_deep_enough_are_flagged() -> None:
    # Black's winrate: move 1 (B) loses 30 %, move 2 (W) loses 25 %, move 3 (B) loses 12 %.
    review = _review([0.6, 0.3, 0.55, 0.43], [16, 16, 2, 2])
    (m1, m2, m3) = review.moves
    assert review.severity(m1, 0.10) == "blunder"
    assert review.severity(m2, 0.10) is None and review.severity(m3, 0.10) is None  # 2 visits
    assert review.mistakes(0.10) == [m1]
    assert review.unchecked(0.10) == [m2, m3]
    assert [m.number for _, m in candidates([review], 0.10, 5)] == [2, 3]
    (planned,) = plan_checks([review], 0.10, 1)  # the largest unchecked: move 2, turns 1 and 2
    assert planned == (review, [2])  # turn 1 is already deep enough
