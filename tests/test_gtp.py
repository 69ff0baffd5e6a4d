"""`katapool gtp` against the real engine, replaying what real GUIs send (the transcripts
T1–T10 of ../shared/reference/gtp_gui.md, with their pipelining) and checking every reply
against the reference's regexes; then crashes and kills."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from gtp_helpers import KATA_LINE, LZ_LINE, PLAY, REQUIRED, Gui, header, move, ok, wait_until

from conftest import G170, Katapool

pytestmark = pytest.mark.engine


# A move search ends at the config's 500 visits, a minute of search on a slow CPU, for each
# genmove (twice where the engine is killed mid-move). A GUI's own engine command may bound it
# by time; 2 s is still seconds of search in progress to interrupt or kill. maxTime bounds
# moves only: kata-analyze runs on (KataGo stretches its time limit without end).
GENMOVE_TIME = ["-override-config", "maxTime=2"]


@pytest.fixture
def gui(kp: Katapool) -> Iterator[Gui]:
    session = Gui(["-model", str(G170), *GENMOVE_TIME], kp.env)
    yield session
    session.close()


def test_t1_t5_sabaki(gui: Gui) -> None:
    # T1: attach, four probes written together.
    gui.send("name", "version", "protocol_version", "list_commands")
    assert gui.response(ok()) == ["= KataGo"]
    assert re.match(r"^= \S+$", gui.response(ok())[0])
    assert gui.response(ok()) == ["= 2"]
    listed = gui.response(ok())
    assert listed[0] == "= protocol_version"
    commands = {listed[0][2:], *listed[1:]}
    assert commands >= REQUIRED and not {"analyze", "genmove_analyze"} & commands
    # T2: sync and turn analysis on.
    gui.send("komi 6.5")
    gui.response(ok())
    gui.send("boardsize 19")
    gui.response(ok())
    gui.send("clear_board")
    gui.response(ok())
    gui.send("kata-analyze B 50")
    gui.stream(None)
    # T3: a move interrupts the analysis; history replayed piped.
    assert gui.interrupt("protocol_version", ok()) == ["= 2"]
    gui.send("clear_board", "play B Q16")
    gui.response(ok())
    gui.response(ok())
    gui.send("kata-analyze W 50")
    gui.stream(None)
    gui.interrupt("protocol_version", ok())
    gui.send("play W D4")
    gui.response(ok())
    gui.send("play B Q4")
    gui.response(ok())
    gui.send("kata-analyze W 50")
    gui.stream(None)
    # T4: back one node (undo), then back again (full replay).
    gui.interrupt("protocol_version", ok())
    gui.send("undo")
    gui.response(ok())
    gui.send("kata-analyze B 50")
    gui.stream(None)
    gui.interrupt("protocol_version", ok())
    gui.send("clear_board", "play B Q16")
    gui.response(ok())
    gui.response(ok())
    # T5: the engine plays White with genmove_analyze; an abort written meanwhile waits.
    gui.send("kata-genmove_analyze W 50", "protocol_version")
    first = gui.line()
    assert header().match(first)
    rest = gui.drain_stream()
    assert rest and PLAY.match(rest[-1]), rest[-3:]
    assert all(KATA_LINE.match(r) for r in rest[:-1])
    assert gui.response(ok()) == ["= 2"]  # only after the play line and its blank
    gui.send("quit")
    assert gui.response(ok()) == ["= "]
    assert gui.proc.wait(10) == 0  # replied, then exited: Sabaki waits for this


def test_t6_t7_lizzie_with_ids(gui: Gui) -> None:
    gui.send("1 name", "2 version", "3 boardsize 19", "4 komi 7.5")
    assert gui.response(ok(1)) == ["=1 KataGo"]
    assert re.match(r"^=2 \S+$", gui.response(ok(2))[0])
    gui.response(ok(3))
    gui.response(ok(4))
    gui.send("5 kata-analyze 10")
    gui.stream(5, at_least=2)
    gui.interrupt("6 komi 6.5", ok(6))
    gui.send("7 kata-analyze 10 ownership true")
    infos = gui.stream(7)
    assert infos[0].split(" ownership ")[1].count(" ") == 360  # 361 values, nothing after
    gui.interrupt("8 play B Q16", ok(8))
    gui.send("9 kata-analyze 10")
    gui.stream(9)
    gui.interrupt("10 undo", ok(10))
    gui.send("11 kata-analyze 10")
    gui.stream(11)
    assert gui.interrupt("12 name", ok(12)) == ["=12 KataGo"]
    gui.send("13 time_settings 0 2 1")
    gui.response(ok(13))
    gui.send("14 genmove B")
    gui.response(move(14), timeout=120)
    gui.send("15 play W D4", "16 genmove B")
    gui.response(ok(15))
    gui.response(move(16), timeout=120)
    gui.send("17 quit")
    gui.response(ok(17))
    assert gui.proc.wait(10) == 0


def test_t8_lizzieyzy_without_ids(gui: Gui) -> None:
    gui.send("name", "version", "list_commands", "komi 7.5", "boardsize 19")
    assert gui.response(ok()) == ["= KataGo"]
    assert re.match(r"^= 1\.[0-9]+\.\S+$", gui.response(ok())[0])
    assert gui.response(ok())[0] == "= protocol_version"
    gui.response(ok())
    gui.response(ok())
    gui.send("kata-get-param playoutDoublingAdvantage", "kata-get-param analysisWideRootNoise",
             "kata-get-rules")
    assert re.match(r"^= \S+$", gui.response(ok())[0])
    assert re.match(r"^= \S+$", gui.response(ok())[0])
    rules = gui.response(ok())[0]
    assert re.match(r'^= \{"friendlyPassOk":(true|false),"hasButton":(true|false),"ko":"[A-Z]+",'
                    r'"scoring":"[A-Z]+","suicide":(true|false),"tax":"[A-Z]+",'
                    r'"whiteHandicapBonus":"[^"]*"\}$', rules), rules
    gui.send("kata-analyze B 10 ownership true pvVisits true movesOwnership true")
    infos = gui.stream(None)
    assert " pvVisits " in infos[0] and " movesOwnership " in infos[0]
    gui.interrupt("play B Q16", ok())
    gui.send("kata-analyze W 10")
    gui.stream(None)
    gui.interrupt("stop", ok())
    gui.send("kata-genmove_analyze W 10")
    assert header().match(gui.line())
    rest = gui.drain_stream()
    assert PLAY.match(rest[-1])


def test_t9_t10_lizgoban(gui: Gui) -> None:
    assert any("GTP ready" in line for line in gui.err)  # nothing was sent before it
    n = iter(range(1000))

    def one(command: str) -> str:
        cid = next(n)
        gui.send(f"{cid} {command}")
        return str(cid)

    cid = one("name")
    assert gui.response(ok(cid)) == [f"={cid} KataGo"]
    cid = one("lz-setoption name visits value 0")
    assert re.match(rf"^\?{cid} ", gui.response(re.compile(rf"^\?{cid} "))[0])  # truthfully refused
    cid = one("kata-analyze interval 1")
    gui.stream(cid, at_least=0)
    cid = one("kata-set-rules chinese")
    gui.drain_stream()
    gui.response(ok(cid))
    for command in ("set_free_handicap A1", "set_position"):
        cid = one(command)
        gui.response(ok(cid))
    cid = one("name")
    gui.response(ok(cid))
    cid = one("lz-analyze interval 1 minmoves 30")
    gui.stream(cid, LZ_LINE, at_least=0)
    cid = one("kata-raw-nn 0")
    gui.drain_stream(LZ_LINE)
    raw = gui.response(ok(cid))
    assert raw[0] == f"={cid} symmetry 0" and any(line.startswith("policyPass") for line in raw)
    # `all`: KataGo's eight blocks, a blank line between each, all in the one answer (the
    # next answer after it, in its place); block 0 is the answer above (KataGo trims the
    # trailing space of an answer's last line only).
    cid = one("kata-raw-nn all")
    cid2 = one("name")
    blocks = [gui.response(ok(cid))] + [gui.response(re.compile(r"^symmetry \d$"))
                                         for _ in range(7)]
    assert [b[0].removeprefix(f"={cid} ") for b in blocks] == [f"symmetry {i}" for i in range(8)]
    assert [ln.rstrip() for ln in blocks[0][1:]] == [ln.rstrip() for ln in raw[1:]]
    assert all(len(b) == len(raw) for b in blocks)
    assert gui.response(ok(cid2)) == [f"={cid2} KataGo"]
    for flag in ("pvVisits", "pvEdgeVisits", "ownershipStdev", "movesOwnership", "rootInfo"):
        cid = one(f"kata-analyze 1 {flag} true")
        gui.stream(cid, at_least=0)
        gui.send("")  # LizGoban's next command ends it; a blank line does too
        gui.drain_stream()
    cid = one("lz-analyze 1 allow B D4 1")
    gui.stream(cid, LZ_LINE, at_least=0)
    cid = one("clear_cache")
    gui.drain_stream(LZ_LINE)
    gui.response(ok(cid))
    cid = one("kata-search_analyze_cancellable B")
    gui.stream(cid, at_least=0)
    cid2 = one("kata-get-param humanSLProfile")
    rest = gui.drain_stream()
    assert rest and PLAY.match(rest[-1])
    gui.response(ok(cid2))
    cid = one("kata-get-models")
    assert re.match(rf'^={cid} \[\{{.*"usesHumanSLProfile":(true|false).*\}}\]$',
                    gui.response(ok(cid))[0])
    cid = one("name")
    gui.response(ok(cid))
    cid = one("clear_board")
    gui.response(ok(cid))
    # T10: normal use.
    cid = one("komi 7.5")
    gui.response(ok(cid))
    analyze = ("kata-analyze {} interval 20 ownership true ownershipStdev true minmoves 30 "
               "pvVisits true pvEdgeVisits true movesOwnership true rootInfo true")
    cid = one(analyze.format("b"))
    infos = gui.stream(cid)
    assert " rootInfo " in infos[0] and " ownershipStdev " in infos[0] and " pvEdgeVisits " in infos[0]
    cid = one("play b Q16")
    gui.drain_stream()
    gui.response(ok(cid))
    cid = one("name")
    gui.response(ok(cid))
    cid = one(analyze.format("w"))
    gui.stream(cid)
    cid = one("undo")
    gui.drain_stream()
    gui.response(ok(cid))
    m = next(n)
    gui.send(f"{m} time_settings 0 1 1", f"{m + 1} name", f"{m + 2} name",
             f"{m + 3} kata-search_cancellable b")
    gui.response(ok(m))
    gui.response(ok(m + 1))
    gui.response(ok(m + 2))
    gui.response(move(m + 3), timeout=120)
    # LizGoban never quits: it SIGKILLs. No KataGo may outlive the bridge.
    children = gui.katago_children()
    assert children
    gui.proc.kill()
    gui.proc.wait(10)
    wait_until(lambda: not any(_alive(c) for c in children), 10, "KataGo to die with the bridge")


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_engine(gui: Gui) -> int:
    (child,) = gui.katago_children()
    os.kill(child.pid, signal.SIGKILL)
    return child.pid


def _new_engine(gui: Gui, old: int) -> None:
    wait_until(lambda: any(c.pid != old and _alive(c) for c in gui.katago_children()), 60,
               "a restarted engine")


def test_engine_killed_during_analysis_and_genmove(gui: Gui) -> None:
    gui.send("1 boardsize 19", "2 komi 6.5", "3 play B Q16", "4 play W D4", "5 play B Q4",
             "6 undo", "7 play B R4")
    for i in range(1, 8):
        gui.response(ok(i))
    gui.send("8 kata-analyze W 20")
    gui.stream(8, at_least=2)
    old = _kill_engine(gui)
    # The GUI sees a pause, then more info lines under the same header.
    more = [gui.line(120) for _ in range(3)]
    assert all(KATA_LINE.match(line) for line in more), more
    _new_engine(gui, old)
    gui.send("9 printsgf")
    gui.drain_stream()
    sgf = "\n".join(gui.response(ok(9)))
    assert re.search(r"KM\[6\.5\]", sgf) and re.findall(r";([BW])\[(\w\w)\]", sgf) == [
        ("B", "pd"), ("W", "dp"), ("B", "qp")]  # Q16, D4, R4 (Q4 undone)
    # Killed while thinking about a genmove: the reply still comes, in order.
    gui.send("10 genmove W", "11 name")
    time.sleep(0.3)
    assert gui.out.empty(), "the move came before the kill: nothing was interrupted"
    old = _kill_engine(gui)
    reply = gui.response(move(10), timeout=120)[0]
    assert gui.response(ok(11)) == ["=11 KataGo"]
    gui.send("12 printsgf")
    sgf = "\n".join(gui.response(ok(12)))
    played = re.findall(r";([BW])\[(\w*)\]", sgf)
    assert played[:3] == [("B", "pd"), ("W", "dp"), ("B", "qp")] and played[3][0] == "W"
    assert len(played) == 4, (reply, sgf)
    assert any("restarting it and restoring the game" in line for line in gui.err)
    assert not any(line.startswith(("=", "?", "info", "play")) for line in gui.err)


def test_crash_loop_ends_in_errors_not_a_hang(gui: Gui) -> None:
    gui.send("1 name")
    gui.response(ok(1))
    killed: set[int] = set()
    gui.send("2 kata-analyze B 10")
    assert header(2).match(gui.line())
    deadline = time.monotonic() + 120
    while not any("giving up" in line for line in gui.err):
        assert time.monotonic() < deadline, gui.err[-5:]
        for child in gui.katago_children():
            if child.pid not in killed and _alive(child):
                killed.add(child.pid)
                os.kill(child.pid, signal.SIGKILL)
        time.sleep(0.05)
    assert len(killed) >= 6
    gui.drain_stream()  # the analysis the GUI had started is ended, as KataGo ends a failed one
    gui.send("3 play B Q16")
    assert gui.response(re.compile(r"^\?3 "))[0].startswith("?3 katapool: engine unavailable")
    gui.send("4 quit")
    gui.response(ok(4))
    assert gui.proc.wait(10) == 0


def test_hung_engine_is_replaced(kp: Katapool) -> None:
    gui = Gui(["-model", str(G170), "--command-timeout", "3"], kp.env)
    try:
        gui.send("1 komi 5.5", "2 play B Q16")
        gui.response(ok(1))
        gui.response(ok(2))
        (child,) = gui.katago_children()
        os.kill(child.pid, signal.SIGSTOP)  # alive, but answers nothing
        gui.send("3 name")
        # Answered at all only if the stopped engine was replaced (it never answers).
        assert gui.response(ok(3), timeout=120) == ["=3 KataGo"]
        # The limit applied is --command-timeout's 3 s, not the 60 s default.
        [quiet] = [int(m.group(1)) for line in gui.err
                   if (m := re.search(r"engine stuck: name unanswered for (\d+) s", line))]
        assert 3 <= quiet < 60, gui.err[-5:]
        gui.send("4 printsgf")
        sgf = "\n".join(gui.response(ok(4)))
        assert "KM[5.5]" in sgf and ";B[pd]" in sgf
        wait_until(lambda: not _alive(child), 60, "the stuck engine to be killed")
        replacements = [c.pid for c in gui.katago_children() if _alive(c)]
        assert replacements and child.pid not in replacements
    finally:
        gui.close()


def test_restart_restores_a_loaded_game_and_quit_waits_for_earlier_answers(
        gui: Gui, tmp_path: Path) -> None:
    # Lines KataGo answers with a bare "?" line (ids past 9 digits) or refuses (names are
    # exact): answered, framed, nothing else disturbed.
    gui.send("0000000013 name", "QUIT", "1 name")
    assert gui.response(re.compile(r"^\? GTP id '0' could not be parsed"))
    assert gui.response(re.compile(r"^\? unknown command$"))
    assert gui.response(ok(1)) == ["=1 KataGo"]
    sgf = tmp_path / "game.sgf"
    sgf.write_text("(;FF[4]GM[1]SZ[9]KM[5.5];B[ee];W[cc];B[gg];W[cg])")
    gui.send("2 kata-set-param playoutDoublingAdvantage 0.25", f"3 loadsgf {sgf}", "4 undo",
             "5 komi 0.5")
    for i in range(2, 6):
        gui.response(ok(i))
    _kill_engine(gui)
    wait_until(lambda: any("restarting it" in line for line in gui.err), 60, "the restart")
    # While the new engine starts: commands, then quit. Each is answered, in order.
    gui.send("6 kata-get-param playoutDoublingAdvantage", "7 printsgf", "8 quit")
    assert gui.response(ok(6)) == ["=6 0.25"]  # set before the loadsgf: kept
    game = "\n".join(gui.response(ok(7)))
    assert "KM[0.5]" in game, game  # set after the loadsgf: it wins
    assert re.findall(r";([BW])\[(\w\w)\]", game) == [("B", "ee"), ("W", "cc"), ("B", "gg")], game
    assert gui.response(ok(8)) == ["=8 "]
    assert gui.proc.wait(30) == 0
