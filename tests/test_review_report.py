"""What `katapool analyze` prints per game and names its outputs, without an engine: reviews
built from evaluations written here (the values are not the point, the report is)."""

from __future__ import annotations

import argparse
from pathlib import Path

from katapool.cli import analyze_cmd
from katapool.cli.common import out
from katapool.game.record import parse_sgf
from katapool.review.batch import GameReview
from katapool.review.game_review import Evaluation


def _review(source: Path, sgf: bytes) -> GameReview:
    record = parse_sgf(sgf)
    evals = [Evaluation(turn=t, winrate_black=0.5, score_lead_black=0.0, best_move="E5",
                        visits=16) for t in range(len(record.moves) + 1)]
    return GameReview(source, record, evals)


def test_names_with_brackets_are_printed_as_written(tmp_path: Path) -> None:
    """Player names such as "Leela [bot]" or "[/]x" are text, not rich markup: "[bot]" was
    dropped and "[/]" crashed the report after the whole review."""
    review = _review(tmp_path / "g.sgf", b"(;GM[1]SZ[9]PB[Leela [bot\\]]PW[[/\\]x]RE[B+R];B[ee])")
    args = argparse.Namespace(mistake=0.1, top=5, brief=False)
    run = analyze_cmd.ReviewRun([review], 16, 16, 0)
    for brief in (False, True):
        args.brief = brief
        with out.capture() as captured:
            analyze_cmd._print_game(review, "g.sgf", args, run, tmp_path / "g[b].sgf", None)
        text = captured.get()
        assert "Leela [bot] (B) vs [/]x (W), B+R" in text and str(tmp_path / "g[b].sgf") in text


def test_games_with_one_name_get_outputs_and_labels_of_their_own() -> None:
    paths = [Path("a/game.sgf"), Path("b/game.sgf"), Path("other.sgf")]
    assert analyze_cmd.output_names(paths) == (
        ["01-game", "02-game", "03-other"], ["a/game.sgf", "b/game.sgf", "other.sgf"])
    # One file system in two does not tell case apart: Game.sgf would overwrite game.sgf.
    stems, _ = analyze_cmd.output_names([Path("a/Game.sgf"), Path("b/game.sgf")])
    assert len({s.casefold() for s in stems}) == 2
    assert analyze_cmd.output_names([Path("x/one.sgf"), Path("two.sgf")]) == (
        ["one", "two"], ["one.sgf", "two.sgf"])
