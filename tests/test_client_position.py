"""Positions for the client: move lists, handicaps, SGF."""

from __future__ import annotations

import pytest

from conftest import SAMPLE_SGF
from katapool.client import Analysis, Position, handicap_stones
from katapool.errors import GameRecordError
from katapool.server.framing import LineFramer, oversized_error


def test_moves_alternate_from_black() -> None:
    p = Position.from_moves(["Q16", "D4", "pass"], komi=6.5, rules="japanese", size=19)
    q = p.query(maxVisits=10)
    assert q["moves"] == [["B", "Q16"], ["W", "D4"], ["B", "pass"]]
    assert q["komi"] == 6.5 and q["rules"] == "japanese" and q["maxVisits"] == 10
    assert p.next_player == "W"
    assert p.play("C3", "R4").moves[-2:] == (("W", "C3"), ("B", "R4"))


def test_handicap_puts_stones_and_white_moves_first() -> None:
    p = Position.from_moves(["Q4"], handicap=2, komi=0.5)
    q = p.query()
    assert q["initialStones"] == [["B", "D4"], ["B", "Q16"]]
    assert q["initialPlayer"] == "W" and q["moves"] == [["W", "Q4"]]
    assert handicap_stones(9) == ["D4", "Q16", "D16", "Q4", "D10", "Q10", "K4", "K16", "K10"]
    assert handicap_stones(6, 13) == ["D4", "K10", "D10", "K4", "D7", "K7"]
    with pytest.raises(GameRecordError):
        handicap_stones(5, 8)  # even boards have no centre point


def test_sgf_text_path_and_move_number() -> None:
    text = SAMPLE_SGF.read_text()
    whole = Position.from_sgf(text)
    at_ten = Position.from_sgf(SAMPLE_SGF, move_number=10)
    assert len(at_ten.moves) == 10 and whole.moves[:10] == at_ten.moves
    assert Position.from_sgf(str(SAMPLE_SGF)) == whole
    with pytest.raises(GameRecordError):
        Position.from_sgf(text, move_number=10_000)


def test_bad_rules_and_sizes_are_refused() -> None:
    with pytest.raises(GameRecordError, match="rules"):
        Position(rules="chess")
    with pytest.raises(GameRecordError, match="board size"):
        Position(size=25)
    with pytest.raises(GameRecordError, match="colour"):
        Position.from_moves([("X", "D4")])


def test_results_keep_perspective() -> None:
    a = Analysis.model_validate({
        "id": "q", "turnNumber": 3, "isDuringSearch": False, "someNewField": 1,
        "rootInfo": {"visits": 20, "winrate": 0.7, "scoreLead": 3.0, "currentPlayer": "W"},
        "moveInfos": [{"move": "D4", "visits": 5, "winrate": 0.6, "scoreLead": 1.0, "order": 1},
                      {"move": "Q16", "visits": 15, "winrate": 0.7, "scoreLead": 3.0, "order": 0}]})
    assert a.best_move == "Q16" and a.visits == 20
    assert a.root_info is not None and a.root_info.winrate_for("W") == pytest.approx(0.3)
    assert a.move_infos[1].score_lead_for("W") == -3.0
    assert a.raw()["someNewField"] == 1 and a.raw()["rootInfo"]["scoreLead"] == 3.0


def test_line_framer_skips_oversized_lines_whole() -> None:
    framer = LineFramer(limit=16)
    got = framer.feed(b'{"id":"a"}\n{"id":"big","x":"' + b"y" * 40)
    assert got == [b'{"id":"a"}']
    got = framer.feed(b"yyyy" * 10 + b'"}\n{"id":"b"}\n')
    assert got[0] == (None, b'{"id":"big","x":"' + b"y" * 40) and got[1] == b'{"id":"b"}'
    err = oversized_error(16, b'{"id":"big","x":"yyy')
    assert err["id"] == "big" and "16 bytes" in err["error"]
    assert "id" not in oversized_error(16, b'{"x":1')
