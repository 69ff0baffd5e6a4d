"""`katapool review`: a real game analysed by the real engine, move by move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import G170, SAMPLE_SGF, SHARED, Katapool
from katapool.errors import GameRecordError
from katapool.game.record import load_sgf, parse_sgf

pytestmark = pytest.mark.engine



@pytest.fixture(scope="module")
def master_game() -> Path:
    games = sorted((SHARED / "sgf" / "master-online").glob("*.sgf"))
    assert games, f"game records missing from {SHARED / 'sgf'}"
    return games[0]


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


def test_review_real_game_json(kp: Katapool, master_game: Path) -> None:
    proc = kp.run("review", str(master_game), "--visits", "1", "--model", str(G170), "--json",
                  check=True)
    rows = [json.loads(ln) for ln in proc.stdout.splitlines()]
    record = load_sgf(master_game)
    assert [r["move"] for r in rows] == list(range(1, len(record.moves) + 1))
    assert [r["vertex"] for r in rows] == [m for _, m in record.moves]
    assert all(0.0 <= r["winrateBlack"] <= 1.0 for r in rows)
    # A real evaluation moves: the winrate is not constant over a whole professional game.
    assert max(r["winrateBlack"] for r in rows) - min(r["winrateBlack"] for r in rows) > 0.05


def test_review_table_with_progress(kp: Katapool) -> None:
    proc = kp.run("review", str(SAMPLE_SGF), "--visits", "1", "--model", str(G170), check=True)
    record = load_sgf(SAMPLE_SGF)
    assert f"{len(record.moves)} " in proc.stdout or str(len(record.moves)) in proc.stdout
    assert "B winrate" in proc.stdout and "biggest losses" in proc.stdout
    assert "analysing" in proc.stderr  # the progress bar goes to stderr, never stdout


def test_illegal_move_is_a_clear_error(kp: Katapool, tmp_path: Path) -> None:
    sgf = tmp_path / "illegal.sgf"
    sgf.write_text("(;GM[1]SZ[19]KM[7.5];B[pd];W[pd])")
    proc = kp.run("review", str(sgf), "--visits", "1", "--model", str(G170))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Illegal" in lines[-1] or "illegal" in lines[-1]
    assert proc.stdout == ""


def test_missing_model_is_a_clear_error(kp: Katapool, tmp_path: Path) -> None:
    proc = kp.run("review", str(SAMPLE_SGF), "--model", str(tmp_path / "none.bin.gz"))
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"error: model not found: {tmp_path / 'none.bin.gz'}"
