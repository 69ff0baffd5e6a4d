"""What `katapool analyze` prints per game and names its outputs, without an engine: reviews
built from evaluations written here (the values are not the point, the report is)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from sgfmill import sgf

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


def test_an_interrupted_graph_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while a PNG is being written: no truncated graph under the finished one's name."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from katapool.review.plot import plot_game

    def interrupted(self: Figure, target: Any, **kwargs: Any) -> None:
        if isinstance(target, (str, Path)):
            Path(target).write_bytes(b"\x89PNG half")
        else:
            target.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    review = _review(tmp_path / "g.sgf", b"(;GM[1]SZ[9];B[ee];W[cc])")
    with pytest.raises(KeyboardInterrupt):
        plot_game(review, tmp_path / "out" / "g.png", 0.1, "16 visits per position")
    assert list((tmp_path / "out").iterdir()) == []  # neither g.png nor a temporary file


def test_annotated_sgf_is_written_whole(tmp_path: Path) -> None:
    from katapool.review.annotate import write_annotated

    source = tmp_path / "g.sgf"
    source.write_bytes(b"(;GM[1]SZ[9]KM[7.5];B[ee];W[cc])")
    review = _review(source, source.read_bytes())
    written = write_annotated(review, tmp_path / "out" / "g.sgf", 0.1)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["g.sgf"]
    assert oct(written.stat().st_mode & 0o777) == "0o644"
    assert parse_sgf(written.read_bytes()).moves == [("B", "E5"), ("W", "C7")]


def test_graph_of_a_game_without_moves(tmp_path: Path) -> None:
    """An empty record (a problem, a game not yet played) draws without matplotlib's warning
    about a singular 0..0 axis on the user's terminal."""
    pytest.importorskip("matplotlib")
    from katapool.review.plot import plot_game

    review = _review(tmp_path / "empty.sgf", b"(;GM[1]SZ[9]KM[7.5])")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = plot_game(review, tmp_path / "empty.png", 0.1, "16 visits per position")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_annotation_says_gained_for_a_negative_loss(tmp_path: Path) -> None:
    from katapool.review.annotate import annotated_sgf

    source = tmp_path / "g.sgf"
    source.write_bytes(b"(;GM[1]SZ[9]KM[7.5];B[ee];W[cc])")
    review = _review(source, source.read_bytes())
    # Black's E5 (engine's choice F5) raises Black's winrate 50% -> 53% and lead 0 -> 2.7.
    review.evaluations[0] = Evaluation(0, 0.5, 0.0, "F5", 16)
    review.evaluations[1] = Evaluation(1, 0.53, 2.7, "C7", 16)
    game = sgf.Sgf_game.from_bytes(annotated_sgf(review, 0.1))
    comment = game.get_main_sequence()[1].get("C")
    assert "this move gained 3.0% winrate and gained 2.7 points" in comment


def test_annotated_from_the_game_as_it_was_read(tmp_path: Path) -> None:
    """The record moved or deleted during a long review: its annotated copy is still written,
    from what was reviewed (reading it again crashed the report after the whole review)."""
    from katapool.review.annotate import annotated_sgf

    source = tmp_path / "g.sgf"
    source.write_bytes(b"(;GM[1]SZ[9]KM[7.5];B[ee];W[cc])")
    review = _review(source, source.read_bytes())
    source.unlink()
    game = sgf.Sgf_game.from_bytes(annotated_sgf(review, 0.1))
    assert [n.get_move()[1] for n in game.get_main_sequence()[1:]] == [(4, 4), (6, 2)]


def test_a_game_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    """The first game's output name is taken by a folder: it is reported, the second is still
    written (an OSError used to end the command there, after the whole review)."""
    games = []
    for name in ("a", "b"):
        source = tmp_path / f"{name}.sgf"
        source.write_bytes(b"(;GM[1]SZ[9]KM[7.5];B[ee];W[cc])")
        games.append(_review(source, source.read_bytes()))
    (tmp_path / "out" / "a.sgf").mkdir(parents=True)
    args = argparse.Namespace(mistake=0.1, top=5, brief=True, json=True, plot=False,
                              out=tmp_path / "out")
    run = analyze_cmd.ReviewRun(games, 16, 16, 0)
    with out.capture() as captured:
        failed = analyze_cmd.report_reviews(run, ["a", "b"], ["a.sgf", "b.sgf"], args)
    first, second = map(json.loads, captured.get().splitlines())
    assert failed == 1
    assert first["game"] == str(tmp_path / "a.sgf") and "cannot write its review" in first["error"]
    assert second["sgf"] == str(tmp_path / "out" / "b.sgf") and Path(second["sgf"]).is_file()


def test_counts_of_one_are_singular(tmp_path: Path) -> None:
    """A review at one visit wrote "katapool (1 visits)" into every comment."""
    from katapool.review.annotate import annotated_sgf
    from katapool.review.budget import Speed, plan_review

    source = tmp_path / "g.sgf"
    source.write_bytes(b"(;GM[1]SZ[9]KM[7.5];B[ee];W[cc])")
    review = _review(source, source.read_bytes())
    review.evaluations = [Evaluation(t, 0.5, 0.0, "E5", 1) for t in range(3)]
    game = sgf.Sgf_game.from_bytes(annotated_sgf(review, 0.1))
    assert game.get_main_sequence()[1].get("C").startswith("katapool (1 visit): ")
    assert analyze_cmd.ReviewRun([review], 1, 2, 1).depth_text() == (
        "1 visit per position, the 1 around the largest swings at 2 visits")
    plan = plan_review(3, Speed(1.0, positions=3, visits=1, seconds=3.0), 3.3, trust_visits=1,
                       wanted_checks=3)
    assert plan.describe().startswith("1 visit per position:"), plan.describe()


def test_unknown_rules_warned_once_per_game_on_stderr(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """An RU katapool does not know was reviewed under Chinese rules without a word."""
    odd, plain = tmp_path / "odd.sgf", tmp_path / "plain.sgf"
    odd.write_bytes(b"(;GM[1]SZ[9]KM[7.5]RU[Ing goe];B[ee])")
    plain.write_bytes(b"(;GM[1]SZ[9]KM[7.5]RU[Japanese];B[ee])")
    games, unreadable = analyze_cmd.load_games([odd, plain], as_json=True)
    captured = capsys.readouterr()
    assert [p for p, _ in games] == [odd, plain] and unreadable == 0
    assert captured.out == ""  # --json's stdout stays one object per game
    warning = " ".join(captured.err.split())
    assert warning.count("warning:") == 1
    assert f"{odd}: unknown rules RU[Ing goe]; using chinese rules" in warning


def test_annotated_sgf_names_katapools_version(tmp_path: Path) -> None:
    import katapool
    from katapool.review.annotate import annotated_sgf

    source = tmp_path / "g.sgf"
    source.write_bytes(b"(;GM[1]SZ[9]KM[7.5]AP[Sabaki:0.52.2];B[ee])")
    review = _review(source, source.read_bytes())
    root = sgf.Sgf_game.from_bytes(annotated_sgf(review, 0.1)).get_root()
    assert root.get("AP") == ("katapool", katapool.__version__)
