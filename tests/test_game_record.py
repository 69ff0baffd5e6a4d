"""Game records (SGF) as KataGo queries."""

from __future__ import annotations

import pytest

from conftest import SAMPLE_SGF
from katapool.errors import GameRecordError
from katapool.game.record import load_sgf, parse_sgf


def test_sgf_to_katago_moves() -> None:
    record = parse_sgf(b"(;GM[1]SZ[19]KM[6.5]RU[Japanese]AB[pd][dp];W[dd];B[tt];W[aa])")
    assert record.rules == "japanese" and record.komi == 6.5
    assert record.initial_stones == [("B", "D4"), ("B", "Q16")]
    assert record.moves == [("W", "D16"), ("B", "pass"), ("W", "A19")]
    q = record.query(maxVisits=3)
    assert q["initialPlayer"] == "W" and q["moves"][0] == ["W", "D16"]


def test_unreadable_sgf() -> None:
    with pytest.raises(GameRecordError, match="not a readable SGF"):
        parse_sgf(b"this is not sgf")


def test_sample_game_is_the_projects_own() -> None:
    record = load_sgf(SAMPLE_SGF)
    assert len(record.moves) > 100
    assert "katapool" in SAMPLE_SGF.read_text()
