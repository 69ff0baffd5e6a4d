"""Stdin and stdout for the protocol commands (`katapool analysis`, `katapool gtp`): asyncio
pipes where possible, threads where not, and never a blocking write on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable
from typing import Any

from katapool.engine.process import STREAM_LIMIT

log = logging.getLogger("katapool")
# Answers written for a reader that has stopped reading are held up to this much; past it the
# reader is treated as gone (the command stops), instead of katapool growing without end.
STDOUT_MAX_UNREAD = 64 << 20


async def start_stdin_reader(loop: asyncio.AbstractEventLoop, submit: Callable[[str], None],
                             keep_blank: bool = False,
                             on_too_long: Callable[[int], None] | None = None,
                             limit: int = STREAM_LIMIT) -> asyncio.Event:
    """Feed stdin lines to ``submit``; the event is set at end of input. Stdin is read as an
    asyncio pipe (no thread hop per line), or on a thread where it is not a pipe. Blank lines
    are skipped unless ``keep_blank`` (in GTP a blank line ends an analysis). A pipe's line of
    more than ``limit`` bytes is dropped whole and reported once, to ``on_too_long(limit)`` (by
    default it is submitted as an unparseable line)."""
    end = asyncio.Event()
    reader = asyncio.StreamReader(limit=limit)
    try:
        if not _pollable(sys.stdin.fileno()):
            raise ValueError("stdin cannot be polled")
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0))
    except (ValueError, OSError):
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        _start_stdin_thread(loop, lines)

        async def drain_queue() -> None:
            while (line := await lines.get()) is not None:
                if keep_blank or line.strip():
                    submit(line)
            end.set()

        _background.add(asyncio.create_task(drain_queue()))
        return end

    def too_long() -> None:
        if on_too_long is not None:
            on_too_long(limit)
        else:
            submit("{")

    async def pump() -> None:
        while True:
            try:
                raw = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # end of input (maybe an unended line)
                raw = exc.partial
            except asyncio.LimitOverrunError:
                await _skip_line(reader)
                too_long()
                continue
            if not raw:
                end.set()
                return
            if keep_blank or raw.strip():
                submit(raw.decode("utf-8", errors="replace"))

    _background.add(asyncio.create_task(pump()))
    return end


_background: set[asyncio.Task[None]] = set()


def _pollable(fd: int) -> bool:
    """Whether the event loop can watch ``fd``. A character device other than a terminal
    (``< /dev/null``) passes asyncio's pipe check but epoll refuses it later, in a callback:
    a traceback and an end of input that never comes."""
    mode = os.fstat(fd).st_mode
    return not stat.S_ISCHR(mode) or os.isatty(fd)


async def _skip_line(reader: asyncio.StreamReader) -> None:
    """Drop the rest of an over-long line, through its newline or to the end of input: what
    follows the reader's limit is not a line of its own."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)  # up to the newline, or all it holds
        except asyncio.IncompleteReadError:
            return


def _start_stdin_thread(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    def run() -> None:
        stream = sys.stdin.buffer
        for raw in iter(stream.readline, b""):
            loop.call_soon_threadsafe(lines.put_nowait, raw.decode("utf-8", errors="replace"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=run, name="stdin", daemon=True).start()


async def open_stdout(loop: asyncio.AbstractEventLoop, on_stalled: Callable[[], None] | None = None,
                      limit: int = STDOUT_MAX_UNREAD) -> _PipeWriter | _StdoutWriter:
    """Stdout as a non-blocking asyncio pipe (written at once, buffered if the reader is slow);
    a writer thread where stdout is a regular file. If more than ``limit`` bytes wait unread,
    the rest is dropped and ``on_stalled`` is called (once)."""
    try:
        transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0))
    except (ValueError, OSError):
        return _StdoutWriter(on_stalled, limit)
    return _PipeWriter(transport, on_stalled, limit)


class _Bounded:
    """What both writers share: the unread-bytes bound and what happens past it."""

    def __init__(self, on_stalled: Callable[[], None] | None, limit: int) -> None:
        self.on_stalled = on_stalled
        self.limit = limit
        self.stalled = False

    def _stall(self, unread: int) -> None:
        self.stalled = True
        log.error("stdout: %d MB of answers are waiting unread; the program reading them has "
                  "stopped reading: stopping", unread >> 20)
        if self.on_stalled is not None:
            self.on_stalled()


class _PipeWriter(_Bounded):
    def __init__(self, transport: asyncio.BaseTransport,
                 on_stalled: Callable[[], None] | None = None,
                 limit: int = STDOUT_MAX_UNREAD) -> None:
        super().__init__(on_stalled, limit)
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport

    def write(self, message: dict[str, Any]) -> None:
        self.write_raw(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def write_raw(self, data: bytes) -> None:
        if self.stalled or self.transport.is_closing():
            return
        unread = self.transport.get_write_buffer_size() + len(data)
        if unread > self.limit:
            self._stall(unread)
            return
        self.transport.write(data)

    async def close(self) -> None:
        if self.stalled:
            self.transport.abort()  # the reader is gone: do not wait for it
            return
        deadline = asyncio.get_running_loop().time() + 30
        while self.transport.get_write_buffer_size() and not self.transport.is_closing() \
                and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        self.transport.close()


class _StdoutWriter(_Bounded):
    """Protocol lines to stdout from a writer thread, so a slow reader never stalls the pool."""

    def __init__(self, on_stalled: Callable[[], None] | None = None,
                 limit: int = STDOUT_MAX_UNREAD, fd: int | None = None) -> None:
        super().__init__(on_stalled, limit)
        self._fd = sys.stdout.fileno() if fd is None else fd
        self._thread_queue: list[bytes] = []
        self._unread = 0  # bytes queued or being written
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="stdout", daemon=True)
        self._thread.start()

    def write(self, message: dict[str, Any]) -> None:
        self.write_raw(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def write_raw(self, data: bytes) -> None:
        if self.stalled:
            return
        with self._cond:
            unread = self._unread + len(data)
            if unread <= self.limit:
                self._thread_queue.append(data)
                self._unread = unread
                self._cond.notify()
        if unread > self.limit:
            self._stall(unread)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._thread_queue and not self._closed:
                    self._cond.wait()
                batch, self._thread_queue = self._thread_queue, []
                closed = self._closed
            if batch:
                data = b"".join(batch)
                with contextlib.suppress(BrokenPipeError, OSError):
                    self._write_all(data)
                with self._cond:
                    self._unread -= len(data)
            if closed and not batch:
                return

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    async def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        # A reader that stopped reading would hold the thread in write(): do not wait for it.
        await asyncio.to_thread(self._thread.join, 0.5 if self.stalled else 30)
