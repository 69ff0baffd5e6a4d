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


def test_gb2312_record_with_gbk_names() -> None:
    """Chinese records labelled GB2312 are often GBK: 喆 (Li Zhe) is not in GB2312."""
    data = "(;GM[1]CA[GB2312]SZ[9]PB[李喆]PW[古力];B[ee])".encode("gbk")
    record = parse_sgf(data)
    assert (record.black, record.white) == ("李喆", "古力")


def test_utf8_record_without_charset() -> None:
    record = parse_sgf("(;GM[1]SZ[9]PB[柯洁];B[ee])".encode())
    assert record.black == "柯洁"
    latin1 = parse_sgf("(;GM[1]SZ[9]PB[Jos\xe9];B[ee])".encode("latin-1"))  # SGF's default stays
    assert latin1.black == "José"


def test_move_off_the_board_is_named() -> None:
    with pytest.raises(GameRecordError, match=r"move 2 \(node 2\) is 'zz', not a point of a 9x9"):
        parse_sgf(b"(;GM[1]SZ[9];B[ee];W[zz];B[cc])")


def test_komi_larger_than_the_board() -> None:
    with pytest.raises(GameRecordError, match=r"KM\[375\] is more than the 9x9 board's 81"):
        parse_sgf(b"(;GM[1]SZ[9]KM[375];B[ee])")
    assert parse_sgf(b"(;GM[1]SZ[9]KM[0];B[ee])").komi == 0.0  # no komi is a komi
    # KataGo's own words for it name no field: "Must be a integer or half-integer ..."
    with pytest.raises(GameRecordError, match=r"KM\[3.75\] is not a whole or half point"):
        parse_sgf(b"(;GM[1]SZ[9]KM[3.75];B[ee])")


@pytest.mark.parametrize(("sgf", "komi"), [
    (b"(;GM[1]SZ[19];B[pd])", 7.5),
    (b"(;GM[1]SZ[19]RU[Japanese];B[pd])", 6.5),
    (b"(;GM[1]SZ[19]HA[2]AB[pd][dp];W[dd])", 0.5),
])
def test_missing_komi_gets_the_usual_one(sgf: bytes, komi: float) -> None:
    assert parse_sgf(sgf).komi == komi


def test_illegal_move_numbered_as_the_record_numbers_it() -> None:
    from katapool.review.batch import explain_engine_error

    record = parse_sgf(b"(;GM[1]SZ[9]KM[7.5];B[ee];W[ee];B[cc])")
    # What KataGo says of this game: its move indexes start at 0.
    said = explain_engine_error("Illegal move 1: E5", record)
    assert said.startswith("move 2 (W E5) is illegal under chinese rules")
    assert explain_engine_error("model not found", record) == "model not found"


def test_a_collection_of_games_is_not_cut_to_its_first() -> None:
    with pytest.raises(GameRecordError, match="the file holds 2 games; katapool reviews one game"):
        parse_sgf(b"(;GM[1]SZ[9]PB[one];B[ee])\n(;GM[1]SZ[9]PB[two];B[cc];W[dd])")


def test_handicap_without_its_stones() -> None:
    with pytest.raises(GameRecordError, match=r"HA\[2\] but no handicap stones \(AB\)"):
        parse_sgf(b"(;GM[1]SZ[19]HA[2]KM[0.5];W[dd];B[pp])")
    # Stones placed as Black's first moves (some servers' way) need no AB.
    assert parse_sgf(b"(;GM[1]SZ[19]HA[2];B[pd];B[dp];W[dd])").moves[:2] == [("B", "Q16"),
                                                                               ("B", "D4")]


def test_unknown_rules_are_read_as_chinese_and_said() -> None:
    record = parse_sgf(b"(;GM[1]SZ[9]KM[7.5]RU[Ing goe];B[ee])", "g.sgf")
    assert record.rules == "chinese"
    assert record.warnings == ["g.sgf: unknown rules RU[Ing goe]; using chinese rules"]
    # Rules it knows, and no RU at all (the usual case), say nothing.
    for sgf in (b"(;GM[1]SZ[9]RU[Japanese];B[ee])", b"(;GM[1]SZ[9]RU[CN];B[ee])",
                b"(;GM[1]SZ[9];B[ee])"):
        assert parse_sgf(sgf).warnings == []
