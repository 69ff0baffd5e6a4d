"""The GTP bridge: a GUI talks to it as to KataGo; behind it runs a native ``katago gtp``.

Lines from the GUI go to the engine as they come (KataGo itself answers in order, streams
analysis and ends it at the next input line), so the protocol stays KataGo's. The bridge
watches every answer go by, which gives it two things KataGo cannot do for itself:

* **Recovery.** It knows which commands are unanswered and the game state the GUI has set up
  (:class:`GameState`). If the engine dies or stops answering, a new one is started, the
  state replayed (answers discarded), and the unanswered commands sent again; an analysis
  whose header the GUI already has goes on streaming under it. A crash loop ends with ``?``
  replies and a clear stderr line, never a hang.
* **Hygiene.** Stdout carries only GTP. The engine's stderr goes to a log file; during the
  first start its lines are passed on (made safe for Lizzie, which reads stderr as stdout),
  then ``GTP ready, beginning main protocol loop`` once, when the engine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from katapool.engine.process import EngineProcess
from katapool.errors import EngineStartError
from katapool.gtp.command import ANALYZE_FAMILY, INTERRUPTIBLE, SEARCHES, Command, parse, with_args
from katapool.gtp.state import GameState

log = logging.getLogger(__name__)

READY_LINE = "GTP ready, beginning main protocol loop"
_HEADER = re.compile(r"^=\d*$")
_UNSAFE_PREFIXES = ("=", "?", "info", "play", "komi=", "opp_komi=", "Tuning")


def _blocks_begun(lines: list[str]) -> int:
    """The symmetry blocks of a `kata-raw-nn` answer begun so far (the first follows "=id ")."""
    first = lines[0].split(" ", 1)[1] if " " in lines[0] else ""
    return sum(1 for text in (first, *lines[1:]) if text.startswith("symmetry "))


def safe_for_guis(line: str) -> str:
    """A stderr line no GUI can mistake for GTP or analysis output (Lizzie merges stderr
    into stdout), and that KaTrain does not read as a fatal error."""
    line = line.replace("what()", "engine said").replace("Uncaught exception", "uncaught error")
    if line.startswith(_UNSAFE_PREFIXES) or " -> " in line:
        line = "katapool: engine: " + line.replace(" -> ", " to ")
    return line


@dataclass
class BridgeOptions:
    command_timeout: float = 60.0  # a plain command unanswered this long: the engine is stuck
    stop_timeout: float = 30.0  # an analysis asked to stop that does not, this long: stuck
    crash_budget: int = 5  # engine losses allowed within crash_window
    crash_window: float = 120.0
    min_interval: int | None = None  # centiseconds: analysis reports no faster than this
    max_moves: int | None = None  # candidate moves per analysis report


@dataclass(eq=False)
class Pending:
    command: Command
    internal: bool = False  # a replay command: its answer is not the GUI's
    header_sent: bool = False  # the GUI has this stream's header
    stop_requested: bool = False  # an input line has followed it (it must end)
    lines: list[str] = field(default_factory=list)
    played: str | None = None
    became_head: float = field(default_factory=time.monotonic)  # the engine is on it since
    last_output: float = field(default_factory=time.monotonic)
    stop_at: float | None = None  # when an input line asked it to stop
    losses: int = 0  # engines lost while it was the one being answered


class GtpBridge:
    def __init__(self, spawn: Callable[[bool], Awaitable[EngineProcess]],
                 write: Callable[[bytes], None], say: Callable[[str], None],
                 options: BridgeOptions | None = None) -> None:
        """``spawn(first)`` starts a ready engine; ``write`` sends bytes to the GUI;
        ``say`` writes one line to the GUI's stderr."""
        self.spawn = spawn
        self.write = write
        self.say = say
        self.options = options or BridgeOptions()
        self.state = GameState()
        self.pending: deque[Pending] = deque()
        self.engine: EngineProcess | None = None
        self.engine_ok = False
        self.failed: str | None = None
        self.quitting = False
        self.finished = asyncio.Event()
        self.deaths: deque[float] = deque()
        self.losses_in_a_row = 0  # engine losses with no answer to the GUI in between
        self.restarts = 0
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._recovering: asyncio.Task[None] | None = None

    # --- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.engine = await self.spawn(True)
        self.engine_ok = True
        self.say(READY_LINE)
        self._reader = asyncio.create_task(self._read(self.engine))
        self._watchdog = asyncio.create_task(self._watch())

    async def close(self) -> None:
        for task in (self._reader, self._watchdog, self._recovering):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.engine is not None:
            await self.engine.close(grace=5.0, term_grace=2.0)

    def end_of_input(self) -> None:
        """The GUI closed our stdin: like KataGo, end a running analysis and stop."""
        for item in self.pending:
            if not item.stop_requested:
                item.stop_requested = True
                item.stop_at = time.monotonic()
        if not any(not p.internal for p in self.pending):
            self.finished.set()
        else:
            self.quitting = True
            if self.engine_ok and self.engine is not None:
                self.engine.write_nowait("")

    # --- from the GUI -----------------------------------------------------------------------

    def on_gui_line(self, line: str) -> None:
        command = parse(line)
        now = time.monotonic()
        for item in self.pending:
            if item.command.name in INTERRUPTIBLE and not item.stop_requested:
                item.stop_requested = True
                item.stop_at = now
        if command is None:
            # No command, but it still ends a running analysis, as in KataGo.
            if self.engine_ok and self.engine is not None and any(
                    p.command.name in INTERRUPTIBLE for p in self.pending):
                self.engine.write_nowait("")
            return
        if self.failed is not None:
            self._answer_failed(command)
            return
        command = self._throttle(command)
        if command.name == "quit" and not self.engine_ok \
                and not any(not p.internal for p in self.pending):
            # Between engines (a restart) with nothing else owed: the GUI is leaving; do not
            # make it wait for one. Commands before it are answered first, as KataGo would.
            self.write(f"={command.echo_id} \n\n".encode())
            self.finished.set()
            return
        self.pending.append(Pending(command))
        if command.name == "quit":
            self.quitting = True
        if self.engine_ok and self.engine is not None:
            self.engine.write_nowait(command.raw)

    def _answer_failed(self, command: Command) -> None:
        cid = command.echo_id
        if command.name == "quit":
            self.write(f"={cid} \n\n".encode())
            self.finished.set()
            return
        self.write(f"?{cid} katapool: engine unavailable: {self.failed}\n\n".encode())

    def _throttle(self, command: Command) -> Command:
        """Slower reports and fewer candidates for remote links (``--min-interval``,
        ``--max-moves``), by rewriting the analysis command's own arguments."""
        opts = self.options
        if command.name not in ANALYZE_FAMILY or (opts.min_interval is None and opts.max_moves is None):
            return command
        args = list(command.args)
        i = 0
        if i < len(args) and args[i].lower() in ("b", "w", "black", "white"):
            i += 1
        if opts.min_interval is not None:
            # Only an interval the GUI gave is raised: without one, KataGo reports nothing
            # periodically, and a value KataGo would refuse stays refused.
            k = i if i < len(args) and _is_number(args[i]) else None
            lower = [a.lower() for a in args]
            if k is None and "interval" in lower and lower.index("interval") + 1 < len(args):
                k = lower.index("interval") + 1
            if k is not None and _is_number(args[k]) and float(args[k]) >= 0:
                args[k] = str(max(float(args[k]), opts.min_interval)).removesuffix(".0")
        if opts.max_moves is not None:
            lower = [a.lower() for a in args]
            if "maxmoves" in lower:
                k = lower.index("maxmoves")
                if k + 1 < len(args) and args[k + 1].isdigit():
                    args[k + 1] = str(min(int(args[k + 1]), opts.max_moves))
            else:
                args += ["maxmoves", str(opts.max_moves)]
        return with_args(command, args)

    # --- from the engine --------------------------------------------------------------------

    async def _read(self, engine: EngineProcess) -> None:
        while True:
            line = await engine.read_line()
            if line is None or engine is not self.engine:
                break  # a replaced engine's last lines are not anyone's answer
            self._on_engine_line(line)
        if engine is self.engine and not self.finished.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(engine.wait(), 10)
            self._lost(f"exited with code {engine.returncode}", engine)

    def _emit(self, text: str) -> None:
        self.write(text.encode())

    def _on_engine_line(self, line: str) -> None:
        if not self.pending:
            if line.strip():
                log.info("engine wrote outside any answer: %s", line[:200])
            return
        head = self.pending[0]
        head.last_output = time.monotonic()
        command = head.command
        if not head.lines:
            if not line.startswith(("=", "?")):
                # Before an answer starts: a stray line (the extra blank after a failed
                # kata-set-param). Never anyone's answer.
                if line.strip():
                    log.info("engine wrote outside any answer: %s", line[:200])
                return
            if command.id_only and line.startswith("?"):
                # KataGo answers a bare (or unreadable) id with one line and a single newline.
                self._done(head, ok=False, body="", text=line + "\n\n")
                return
            head.lines.append(line)
            if command.streams and _HEADER.match(line) and not head.internal \
                    and not head.header_sent:
                head.header_sent = True
                self._emit(line + "\n")
            return
        if command.streams and _HEADER.match(head.lines[0]):
            # Inside a stream: pass each line on as it comes.
            if line == "":
                self._done(head, ok=True, body="", text="\n")
                return
            if line.startswith("play "):
                head.played = line[5:].strip()
            if not head.internal:
                self._emit(line + "\n")
            return
        if line == "":
            first = head.lines[0]
            ok = first.startswith("=")
            if ok and 0 < _blocks_begun(head.lines) < command.answer_blocks:
                head.lines.append(line)  # between two symmetries' blocks: the answer goes on
                return
            body = "\n".join([first.split(" ", 1)[1] if " " in first else "", *head.lines[1:]])
            # A stream the GUI already has the header of (re-run after a crash) can only end.
            text = "\n" if head.header_sent else "\n".join(head.lines) + "\n\n"
            self._done(head, ok=ok, body=body, text=text)
            return
        head.lines.append(line)

    def _done(self, head: Pending, ok: bool, body: str, text: str) -> None:
        self.pending.popleft()
        if self.pending:
            self.pending[0].became_head = time.monotonic()
        if head.internal:
            if not ok:
                log.warning("replay command %r was refused: %s", head.command.raw, body.strip())
        else:
            self.losses_in_a_row = 0
            self.state.record(head.command, ok, body, head.played)
            self._emit(text)
        if head.command.name == "quit" and not head.internal or (
                self.quitting and not any(not p.internal for p in self.pending)):
            self.finished.set()

    # --- failure and recovery ---------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if not self.engine_ok or not self.pending or self.engine is None:
                continue
            head = self.pending[0]
            now = time.monotonic()
            quiet = now - max(head.became_head, head.last_output)
            cause = None
            if head.command.name not in SEARCHES and quiet > self.options.command_timeout:
                cause = f"{head.command.name} unanswered for {quiet:.0f} s"
            elif head.command.name in INTERRUPTIBLE and head.stop_at is not None:
                # Asked to stop while queued behind a long search: the engine got to it (and
                # to the stop) only when it became the head.
                since_stop = now - max(head.stop_at, head.became_head, head.last_output)
                if since_stop > self.options.stop_timeout:
                    cause = f"{head.command.name} did not stop within {since_stop:.0f} s"
            if cause is not None:
                log.warning("engine stuck: %s", cause)
                self._lost(f"stuck ({cause})", self.engine)

    def _lost(self, cause: str, engine: EngineProcess | None) -> None:
        if engine is not self.engine or not self.engine_ok or self.finished.is_set():
            return
        self.engine_ok = False
        if self.quitting and all(p.command.name == "quit" for p in self.pending if not p.internal):
            for item in [p for p in self.pending if not p.internal]:
                self._done(item, ok=True, body="", text=f"={item.command.echo_id} \n\n")
            self.finished.set()
            return
        self._recovering = asyncio.create_task(self._recover(cause))

    async def _recover(self, cause: str) -> None:
        try:
            await self._restart(cause)
        except Exception as exc:  # a bug or an OS failure: end in errors, not in a hang
            log.exception("recovery failed")
            self._fail(f"could not restart KataGo: {exc.__class__.__name__}: {exc}")

    async def _restart(self, cause: str) -> None:
        tail = self.engine.tail_text(3).replace("\n", " | ") if self.engine else ""
        self.losses_in_a_row += 1
        head = next((p for p in self.pending if not p.internal), None)
        if head is not None and self.pending and self.pending[0] is head:
            head.losses += 1
        while True:
            now = time.monotonic()
            self.deaths.append(now)
            while self.deaths and now - self.deaths[0] > self.options.crash_window:
                self.deaths.popleft()
            if len(self.deaths) > self.options.crash_budget \
                    or self.losses_in_a_row > self.options.crash_budget:
                self._fail(f"KataGo failed {max(len(self.deaths), self.losses_in_a_row)} times "
                           f"without recovering; last: {cause}" + (f" ({tail})" if tail else ""))
                return
            self.say(f"katapool: KataGo {cause}; restarting it and restoring the game")
            old = self.engine
            if old is not None:
                await old.kill()
            try:
                engine = await self.spawn(False)
            except EngineStartError as exc:
                cause = f"could not restart: {exc}"
                self.losses_in_a_row += 1
                await asyncio.sleep(min(5.0, 0.5 * len(self.deaths)))
                continue
            break
        self.engine = engine
        self.restarts += 1
        gui_items = [p for p in self.pending if not p.internal]
        if gui_items and gui_items[0].losses >= 2:
            # Twice the engine died on this very command: a poison command. Answer it, go on.
            bad = gui_items.pop(0)
            cid = bad.command.echo_id
            self._emit("\n" if bad.header_sent else
                       f"?{cid} katapool: KataGo died twice running this command; not sent again\n\n")
        if gui_items and gui_items[0].played is not None and gui_items[0].header_sent:
            # The GUI already has this genmove_analyze's move: keep it, end the stream.
            done = gui_items.pop(0)
            self.state.record(done.command, True, "", done.played)
            self._emit("\n")
        replay = [Pending(cmd, internal=True) for line in self.state.replay()
                  if (cmd := parse(line)) is not None]
        now = time.monotonic()
        for item in gui_items:
            item.lines = []  # partial answers start over (a stream's header stays the GUI's)
            item.played = None
            item.became_head = item.last_output = now
            if item.stop_at is not None:
                item.stop_at = now
        self.pending = deque([*replay, *gui_items])
        for i, item in enumerate(self.pending):
            engine.write_nowait(item.command.raw)
            if item.stop_requested and i == len(self.pending) - 1:
                engine.write_nowait("")  # the GUI had already asked it to stop
        self.engine_ok = True
        self._reader = asyncio.create_task(self._read(engine))
        self.say("katapool: KataGo restarted; game restored")
        if self.quitting and not gui_items:
            self.finished.set()

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self.say(f"katapool: giving up: {reason}")
        for item in list(self.pending):
            if item.internal:
                continue
            cid = item.command.echo_id
            if item.header_sent:
                self._emit("\n")  # a stream the GUI has started: end it, as KataGo does on error
            elif item.command.name == "quit":
                self._emit(f"={cid} \n\n")
                self.finished.set()
            else:
                self._emit(f"?{cid} katapool: engine unavailable: {reason}\n\n")
        self.pending.clear()
        if self.quitting:
            self.finished.set()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
