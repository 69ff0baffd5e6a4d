"""Reading CMake, make and compiler output as it streams: the percentage for a progress bar,
the file being compiled, and the first real error (a failed KataGo build prints thousands of
lines; the first error is the one that matters, the rest usually follow from it)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MAKE_PERCENT_RE = re.compile(r"^\[\s*(\d+)%\]")  # make: "[ 42%] Building CXX object ..."
_NINJA_RE = re.compile(r"^\[(\d+)/(\d+)\]")  # ninja: "[12/130] Building CXX object ..."
_OBJECT_RE = re.compile(r"Building CXX object \S*?\.dir/(\S+?)\.o\b")
_ERROR_RE = re.compile(r"(?:^|\s|:)(?:fatal )?error:|^CMake Error")
_LINKER_RE = re.compile(r"collect2: error|ld returned \d+ exit status")
_NOISE_RE = re.compile(r"^(?:g?make(?:\[\d+\])?:|\[\s*\d+%\]|\[\d+/\d+\]|ninja: )")
CONTEXT_LINES = 6  # the error line and what the compiler prints under it (the code, a caret)
PLAIN_STEP = 10  # without a terminal: a line each time this many percent are done


def clean(line: str) -> str:
    return _ANSI_RE.sub("", line.rstrip("\n"))


def percent_of(line: str) -> int | None:
    """How far the build is, from a make or ninja progress line."""
    if m := _MAKE_PERCENT_RE.match(line):
        return int(m.group(1))
    if m := _NINJA_RE.match(line):
        return 100 * int(m.group(1)) // max(1, int(m.group(2)))
    return None


def compiled_file(line: str) -> str | None:
    m = _OBJECT_RE.search(line)
    return m.group(1) if m else None


def first_error(lines: Sequence[str]) -> list[str]:
    """The first error with the lines that explain it; empty when no line looks like one.

    A linker failure names itself last (collect2), after the undefined references that
    caused it, so its context is what comes before it."""
    for i, line in enumerate(lines):
        if not _ERROR_RE.search(line):
            continue
        if _LINKER_RE.search(line):
            before = [ln for ln in lines[max(0, i - CONTEXT_LINES + 1):i] if not _NOISE_RE.match(ln)]
            return [*before, line]
        block = [line]
        for follow in lines[i + 1:i + CONTEXT_LINES]:
            if _NOISE_RE.match(follow) or (_ERROR_RE.search(follow) and "CMake" not in line):
                break
            block.append(follow)
        return block
    return []


class BuildProgress:
    """A bar on a terminal; otherwise a plain line every few percent, so a log or a pipe still
    shows the build moving."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._next_step = PLAIN_STEP
        self._began = time.monotonic()

    def __enter__(self) -> BuildProgress:
        if self.console.is_terminal:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                                      console=self.console, transient=True)
            self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, exc, tb)

    def phase(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)
        if self._progress is not None and self._task is None:
            self._task = self._progress.add_task("", total=100)

    def update(self, percent: int, current: str | None) -> None:
        if self._progress is not None and self._task is not None:
            label = escape(f"compiling {current}") if current else "compiling"
            self._progress.update(self._task, completed=percent, description=label)
            return
        if percent >= self._next_step:
            self._next_step = (percent // PLAIN_STEP + 1) * PLAIN_STEP
            elapsed = time.monotonic() - self._began
            self.console.print(f"  {percent:3d}% compiled ({elapsed:.0f} s)", highlight=False)


def run_logged(cmd: Sequence[str], log: Path, env: dict[str, str],
               on_line: Callable[[str], None] = lambda line: None) -> tuple[int, list[str]]:
    """Run ``cmd``, appending its merged output to ``log``; return its exit status and lines."""
    lines: list[str] = []
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", env=env,
                                start_new_session=True)  # one group: make and its compilers
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = clean(raw)
                fh.write(line + "\n")
                lines.append(line)
                on_line(line)
        except BaseException:  # Ctrl-C, a full disk: no compiler may outlive us
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return proc.wait(), lines
