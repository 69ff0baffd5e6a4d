"""Progress for long commands on stderr: a live bar on a terminal; otherwise a plain line every
few percent, so a user who sends the output to a file or a pipe still sees it move."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from katapool.review.budget import format_duration

LINE_EVERY = 0.05  # a plain line each time this share of the phase is done


class ProgressReport:
    def __init__(self, console: Console, transient: bool = False) -> None:
        self.console = console
        self.transient = transient  # the live bar disappears when done
        self.live = console.is_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._phase = ""
        self._total = 0
        self._done = 0
        self._next_line = 0.0
        self._phase_started = 0.0

    def __enter__(self) -> ProgressReport:
        if self.live:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("left"), TimeRemainingColumn(),
                                      console=self.console, transient=self.transient)
            self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, exc, tb)

    def note(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False)

    def start(self, phase: str, total: int) -> None:
        self._phase, self._total, self._done = phase, max(1, total), 0
        self._phase_started = time.monotonic()
        self._next_line = LINE_EVERY
        if self._progress is not None:
            if self._task is not None:
                self._progress.stop_task(self._task)
            self._task = self._progress.add_task(phase, total=total)
        else:
            self.note(f"{phase}: {total} positions")

    def advance(self) -> None:
        self._done += 1
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)
            return
        share = self._done / self._total
        if share + 1e-9 >= self._next_line or self._done == self._total:
            while self._next_line <= share + 1e-9:
                self._next_line += LINE_EVERY
            elapsed = time.monotonic() - self._phase_started
            left = elapsed / share - elapsed
            self.note(f"  {share:4.0%} ({self._done}/{self._total}), "
                      f"{format_duration(elapsed)} elapsed"
                      + ("" if self._done == self._total else f", about {format_duration(left)} left"))
