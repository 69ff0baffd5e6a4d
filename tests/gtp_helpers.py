"""A GUI's side of a GTP conversation with `katapool gtp`, and the response regexes of
../shared/reference/gtp_gui.md §9."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time

import psutil

from processes import engines_under

V = r"(?:[A-HJ-Z][0-9]{1,2}|pass)"
F = r"(?:-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[-+][0-9]+)?|-?nan|-?inf)"
LZ_SEG = (rf"info move {V} visits [0-9]+ winrate -?[0-9]+ prior -?[0-9]+ lcb -?[0-9]+ "
          rf"order [0-9]+ pv(?: {V})*")
KATA_SEG = (rf"info move {V} visits [0-9]+ edgeVisits [0-9]+ utility {F} winrate {F} scoreMean {F} "
            rf"scoreStdev {F} scoreLead {F} scoreSelfplay {F}(?: noResultValue {F})? prior {F} "
            rf"lcb {F} utilityLcb {F} weight {F}(?: isSymmetryOf {V})? order [0-9]+ pv(?: {V})*"
            rf"(?: pvVisits(?: [0-9]+)*)?(?: pvEdgeVisits(?: [0-9]+)*)?"
            rf"(?: movesOwnership(?: {F})+)?(?: movesOwnershipStdev(?: {F})+)?")
ROOT = (rf"rootInfo visits [0-9]+ utility {F} winrate {F} scoreMean {F} scoreStdev {F} "
        rf"scoreLead {F} scoreSelfplay {F} weight {F}(?: rawStWrError {F} rawStScoreError {F} "
        rf"rawVarTimeLeft {F})?")
LZ_LINE = re.compile(rf"^{LZ_SEG}(?: {LZ_SEG})*$")
KATA_LINE = re.compile(rf"^{KATA_SEG}(?: {KATA_SEG})*(?: {ROOT})?(?: ownership(?: {F}){{361}})?"
                       rf"(?: ownershipStdev(?: {F}){{361}})?$")
PLAY = re.compile(rf"^play (?:{V}|resign|cancelled)$")
REQUIRED = {"kata-analyze", "lz-analyze", "kata-genmove_analyze", "undo", "genmove", "play", "komi",
            "boardsize", "clear_board", "quit"}


def ok(cid: str | int | None = None) -> re.Pattern[str]:
    return re.compile(rf"^={'' if cid is None else cid} (?P<body>.*)$")


def header(cid: str | int | None = None) -> re.Pattern[str]:
    return re.compile(rf"^={'' if cid is None else cid}$")


def move(cid: str | int | None = None) -> re.Pattern[str]:
    return re.compile(rf"^={'' if cid is None else cid} (?:{V}|resign|cancelled)$")


class Gui:
    """Runs `katapool gtp` as a GUI would: lines in, stdout lines out, stderr kept."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "katapool", "gtp", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, bufsize=0)
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        if not self.ready.wait(180):
            self.proc.kill()
            raise AssertionError("no 'GTP ready' on stderr:\n" + "\n".join(self.err))

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.out.put(raw.decode().rstrip("\n"))
        self.out.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode().rstrip("\n")
            self.err.append(line)
            if "GTP ready" in line:
                self.ready.set()

    def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(line + "\n" for line in lines).encode())

    def line(self, timeout: float = 60) -> str:
        try:
            got = self.out.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s; stderr:\n"
                                 + "\n".join(self.err[-20:])) from None
        assert got is not None, "stdout closed"
        return got

    def response(self, pattern: re.Pattern[str], timeout: float = 60) -> list[str]:
        """One whole response: its first line matches ``pattern``; then lines to the blank."""
        first = self.line(timeout)
        assert pattern.match(first), f"{first!r} does not match {pattern.pattern}"
        lines = [first]
        while (nxt := self.line(timeout)) != "":
            lines.append(nxt)
        return lines

    def blank(self, timeout: float = 30) -> None:
        got = self.line(timeout)
        assert got == "", f"expected the blank line ending an analysis, got {got!r}"

    def stream(self, cid: str | int | None, pattern: re.Pattern[str] = KATA_LINE,
               at_least: int = 1, timeout: float = 60) -> list[str]:
        """A header, then ``at_least`` info lines (each matching ``pattern``)."""
        first = self.line(timeout)
        assert header(cid).match(first), f"{first!r} is not the header of {cid}"
        infos = []
        while len(infos) < at_least:
            info = self.line(timeout)
            assert pattern.match(info), f"info line does not match: {info[:300]!r}"
            infos.append(info)
        return infos

    def drain_stream(self, pattern: re.Pattern[str] = KATA_LINE, timeout: float = 30) -> list[str]:
        """After an interrupting line: the rest of the stream's info lines, then its blank."""
        infos = []
        while (got := self.line(timeout)) != "":
            assert pattern.match(got) or PLAY.match(got), f"unexpected line in a stream: {got[:300]!r}"
            infos.append(got)
        return infos

    def interrupt(self, command: str, pattern: re.Pattern[str] | None = None) -> list[str]:
        """Send ``command`` while an analysis streams: the stream ends first, then its answer."""
        self.send(command)
        self.drain_stream()
        return self.response(pattern or ok())

    def katago_children(self) -> list[psutil.Process]:
        return engines_under(self.proc.pid, include_zombies=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
