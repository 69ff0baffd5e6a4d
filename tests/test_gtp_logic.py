"""The bridge's own logic without an engine: command parsing, game-state tracking for
replay, throttling, stderr safety."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from katapool.gtp.bridge import BridgeOptions, GtpBridge, Pending, safe_for_guis
from katapool.gtp.command import parse
from katapool.gtp.state import GameState


def _bridge(**options: object) -> GtpBridge:
    async def spawn(first: bool) -> object:
        raise AssertionError("no engine in these tests")

    return GtpBridge(spawn, lambda data: None, lambda line: None,  # type: ignore[arg-type]
                     BridgeOptions(**options))  # type: ignore[arg-type]


def test_parse_like_katago() -> None:
    c = parse("12 kata-analyze\tB 50 # comment\r")
    assert c is not None and (c.id, c.name, c.args, c.raw) == ("12", "kata-analyze", ("B", "50"),
                                                              "12 kata-analyze B 50")
    assert parse("   ") is None and parse("# only a comment") is None
    bare = parse("7")
    assert bare is not None and bare.id_only
    assert parse("kata-genmove_analyze W 50").streams  # type: ignore[union-attr]
    assert not parse("kata-search_cancellable b").streams  # type: ignore[union-attr]
    # KataGo reads at most 9 id digits; longer ids get its one-line "?" answer.
    for line in ("1234567890 name", "0000000013 name"):
        assert parse(line).id_only, line  # type: ignore[union-attr]
    assert parse("007 name").echo_id == "7"  # type: ignore[union-attr]
    assert parse("QUIT").name == "QUIT"  # type: ignore[union-attr]  # names are exact: unknown


def _record(state: GameState, line: str, ok: bool = True, body: str = "", played: str | None = None) -> None:
    command = parse(line)
    assert command is not None
    state.record(command, ok, body, played)


def test_state_replays_what_the_gui_set_up() -> None:
    s = GameState()
    _record(s, "boardsize 19")
    _record(s, "komi 7.5")
    _record(s, "kata-set-rules japanese")
    _record(s, "play B Q16")
    _record(s, "play W D4")
    _record(s, "undo")
    _record(s, "play W C3", ok=False)  # refused: not part of the game
    _record(s, "genmove W", body="D16")
    _record(s, "kata-genmove_analyze B 50", played="R4")
    _record(s, "kata-genmove_analyze W 50", played="resign")
    _record(s, "komi 6.5")  # set again: replayed last, once
    _record(s, "fixed_handicap 2", body="D4 Q16")
    _record(s, "time_settings 0 2 1")
    assert s.replay() == ["boardsize 19", "kata-set-rules japanese", "komi 6.5", "time_settings 0 2 1",
                          "clear_board", "play B Q16", "play W D16", "play B R4",
                          "set_free_handicap D4 Q16"]
    _record(s, "clear_board")
    assert s.replay()[-1] == "clear_board"
    _record(s, "boardsize 9")
    _record(s, "play B E5")
    _record(s, "boardsize 9")  # the same size: KataGo keeps the stones
    _record(s, "rectangular_boardsize 9 9")  # the same size, said another way
    _record(s, "kata-genmove_analyze 50", played="C3")  # no colour: the side to move
    assert s.replay() == ["kata-set-rules japanese", "komi 6.5", "time_settings 0 2 1",
                          "rectangular_boardsize 9 9", "clear_board", "play B E5", "play W C3"]


def test_state_replays_loadsgf_in_its_place(tmp_path: Path) -> None:
    s = GameState()
    _record(s, "kata-set-param playoutDoublingAdvantage 0.25")  # loadsgf keeps it
    _record(s, "time_settings 0 5 1")
    _record(s, "loadsgf game.sgf")
    _record(s, "undo")  # takes back the game's last move
    _record(s, "komi 0.5")  # overrides the game's komi
    _record(s, "play W C7")
    assert s.replay() == ["kata-set-param playoutDoublingAdvantage 0.25", "time_settings 0 5 1",
                          "loadsgf game.sgf", "komi 0.5", "undo", "play W C7"]
    _record(s, "undo")
    _record(s, "undo")
    assert s.replay()[-2:] == ["undo", "undo"]
    _record(s, "clear_board")  # the loaded board goes; its komi and rules stay
    assert s.replay() == ["kata-set-param playoutDoublingAdvantage 0.25", "time_settings 0 5 1",
                          "loadsgf game.sgf", "komi 0.5", "clear_board"]
    # A board size after a loadsgf: the same as the game's keeps its board, another clears it.
    game = tmp_path / "nine.sgf"
    game.write_text("(;GM[1]SZ[9];B[ee];W[cc])")
    s = GameState()
    _record(s, "boardsize 19")
    _record(s, f"loadsgf {game}")
    _record(s, "boardsize 9")
    _record(s, "play B G7")
    assert s.replay() == [f"loadsgf {game}", "boardsize 9", "play B G7"]
    _record(s, "boardsize 19")
    _record(s, "play B Q16")
    assert s.replay() == [f"loadsgf {game}", "boardsize 19", "clear_board", "play B Q16"]


def test_throttling_rewrites_analysis_arguments() -> None:
    b = _bridge(min_interval=50, max_moves=10)

    def t(line: str) -> str:
        command = parse(line)
        assert command is not None
        return b._throttle(command).raw

    assert t("5 kata-analyze B 10") == "5 kata-analyze B 50 maxmoves 10"
    assert t("kata-analyze 100 ownership true") == "kata-analyze 100 ownership true maxmoves 10"
    assert t("kata-analyze b interval 20 maxmoves 30 rootInfo true") == \
        "kata-analyze b interval 50 maxmoves 10 rootInfo true"
    assert t("lz-analyze W") == "lz-analyze W maxmoves 10"  # no interval given: none added
    assert t("lz-analyze 10 allow b D4 1") == "lz-analyze 50 allow b D4 1 maxmoves 10"
    assert t("kata-analyze B 10 avoid b D4,Q16 30") == "kata-analyze B 50 avoid b D4,Q16 30 maxmoves 10"
    assert t("kata-analyze -5") == "kata-analyze -5 maxmoves 10"  # still refused, truthfully
    assert t("play B Q16") == "play B Q16"  # only analysis commands
    assert _bridge()._throttle(parse("kata-analyze B 10")).raw == "kata-analyze B 10"  # type: ignore[arg-type]


def test_stderr_lines_are_safe_for_lizzie_and_katrain() -> None:
    for line in ("= 5", "?bad", "info move D4", "play D4", "komi=7.5", "Tuning xgemm 1/20",
                 "a -> b", "what(): oops", "Uncaught exception"):
        safe = safe_for_guis(line)
        assert not safe.startswith(("=", "?", "info", "play", "komi=", "opp_komi=", "Tuning"))
        assert " -> " not in safe and "what()" not in safe and "Uncaught exception" not in safe
    assert safe_for_guis("Model name: g170") == "Model name: g170"


def test_stop_deadline_counts_from_when_the_engine_got_to_the_analysis() -> None:
    """An analysis stopped while queued behind a long genmove: when it becomes the head, the
    engine has only just been able to stop it; that is no hang."""
    b = _bridge(stop_timeout=3.0)
    lost: list[str] = []
    b._lost = lambda cause, engine: lost.append(cause)  # type: ignore[method-assign]
    b.engine, b.engine_ok = object(), True  # type: ignore[assignment]
    now = time.monotonic()
    analysis = Pending(parse("5 kata-analyze B 10"), stop_requested=True,  # type: ignore[arg-type]
                       stop_at=now - 40, last_output=now - 40)
    analysis.became_head = now  # the 40 s genmove before it just ended
    b.pending.append(analysis)

    async def two_watchdog_rounds() -> None:
        watch = asyncio.create_task(b._watch())
        await asyncio.sleep(1.5)
        assert not lost, lost
        analysis.became_head = time.monotonic() - 10  # now it is really stuck
        await asyncio.sleep(1.2)
        watch.cancel()

    asyncio.run(two_watchdog_rounds())
    assert lost and "did not stop" in lost[0]


def test_raw_nn_answers_pass_through_whole() -> None:
    """`kata-raw-nn all` (and kata-raw-human-nn all) answer one block per symmetry with blank
    lines between; one symmetry, one block. The GUI gets KataGo's bytes: every block, and the
    answers after it in their places (the lines fed here have KataGo's framing; the real
    engine's answer goes through in test_gtp.py's LizGoban session)."""
    written: list[bytes] = []

    async def spawn(first: bool) -> object:
        raise AssertionError("no engine in this test")

    b = GtpBridge(spawn, written.append, lambda line: None)  # type: ignore[arg-type]

    def block(symmetry: int) -> list[str]:
        return [f"symmetry {symmetry}", "whiteWin 0.460000", "policy", "0.1 0.2 ", "policyPass 0.0 "]

    def answer(prefix: str, symmetries: range) -> list[str]:
        lines: list[str] = []
        for s in symmetries:
            lines += [*block(s), ""]  # a blank after each block; the last one ends the answer
        lines[0] = prefix + lines[0]
        return lines

    expected = [
        ("7 kata-raw-nn all", answer("=7 ", range(8))),
        ("kata-raw-human-nn b ALL", answer("= ", range(8))),
        ("kata-raw-nn 3", answer("= ", range(3, 4))),
        ("kata-raw-nn w all 0.5", answer("= ", range(8))),
        ("kata-raw-nn", ["? Expected a symmetry argument 'all' or index [0-7]", ""]),
        ("name", ["= KataGo", ""]),
    ]
    for command, _ in expected:
        b.on_gui_line(command)
    for _, lines in expected:
        for line in lines:
            b._on_engine_line(line)
    assert b"".join(written) == "".join("\n".join(lines) + "\n" for _, lines in expected).encode()
    assert not b.pending
