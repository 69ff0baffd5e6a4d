"""One native KataGo process over pipes (never a PTY: a PTY truncates long JSON lines).

The process gets its own session (so signals aimed at katapool's terminal do not reach it
half-way through a batch) and ``PR_SET_PDEATHSIG`` (so it dies with katapool even when
katapool is SIGKILLed). Stderr is drained continuously into a rotating log file and an
in-memory tail used to diagnose failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import logging.handlers
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from katapool.engine.diagnose import diagnose
from katapool.errors import EngineStartError, EngineTerminatedError

log = logging.getLogger(__name__)

STREAM_LIMIT = 64 * 1024 * 1024  # one analysis line with ownership can be several MB
_PR_SET_PDEATHSIG = 1


def _load_libc() -> ctypes.CDLL | None:
    # Loaded once, here: between fork and exec only async-signal-safe work is allowed.
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


def _child_setup(parent_pid: int) -> None:
    """Runs in the child between fork and exec: die with the parent."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def dies_with_this_process() -> Callable[[], None]:
    """A ``preexec_fn`` for a short KataGo run (a tuner, a benchmark): the child is killed when
    katapool dies, however it dies (a SIGTERM, a SIGKILL), instead of computing on for minutes
    with no one to read it."""
    return functools.partial(_child_setup, os.getpid())


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


@contextlib.contextmanager
def tools_stop_on_sigterm() -> Iterator[None]:
    """While KataGo's tools (the tuner, the measuring tools) run in the foreground: a SIGTERM
    (a service stopped, a container's end) ends katapool as a Ctrl-C does, unwinding, so that
    the tool is killed and its scratch folder removed on the way out. A SIGTERM's default
    ends Python with no cleanup at all (PDEATHSIG, see :func:`dies_with_this_process`, still
    stops the tool, but its scratch folder stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def engine_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The engine's environment: GPUs numbered in PCI order, as NVML (and so katapool's
    `gpu:N`) numbers them, rather than CUDA's default fastest-first order."""
    env = dict(os.environ)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env.update(extra or {})
    return env


KEEP_LOGS_DEFAULT = 20
# katapool's per-process engine stderr logs (`<pid>-member-0.stderr.log`, rotations `.1` …) and
# KataGo's own per-process logs (`20261206-101903-FDB98166.log`, in its logDir).
_STDERR_LOG = re.compile(r"^(\d+)-.+\.stderr\.log(\.\d+)?$")
_KATAGO_LOG = re.compile(r"^\d{8}-\d{6}-[0-9A-Fa-f]+\.log$")


def keep_logs() -> int:
    """How many processes' engine logs to keep per kind (KATAPOOL_KEEP_LOGS, default 20)."""
    try:
        return max(1, int(os.environ.get("KATAPOOL_KEEP_LOGS", KEEP_LOGS_DEFAULT)))
    except ValueError:
        return KEEP_LOGS_DEFAULT


def prune_logs(directory: Path, keep: int | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` processes' engine logs in ``directory``, for each
    kind (katapool's stderr logs, grouped by process; KataGo's own logs). A process still
    running keeps its logs. Other files are never touched. Returns what was deleted."""
    keep = keep_logs() if keep is None else keep
    stderr_groups: dict[int, list[Path]] = {}
    katago_logs: list[list[Path]] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    for path in entries:
        if (found := _STDERR_LOG.match(path.name)) is not None:
            stderr_groups.setdefault(int(found.group(1)), []).append(path)
        elif _KATAGO_LOG.match(path.name):
            katago_logs.append([path])
    live = {pid for pid in stderr_groups if pid == os.getpid() or _running(pid)}
    finished = [group for pid, group in stderr_groups.items() if pid not in live]
    deleted: list[Path] = []
    for groups, kept in ((finished, max(0, keep - len(live))), (katago_logs, keep)):
        for group in sorted(groups, key=_newest, reverse=True)[kept:]:
            for path in group:
                with contextlib.suppress(OSError):
                    path.unlink()
                    deleted.append(path)
    return deleted


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _newest(group: list[Path]) -> float:
    times = []
    for path in group:
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times, default=0.0)


def _stderr_handler(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 << 20, backupCount=3,
                                                   delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    return handler


class EngineProcess:
    """A started KataGo command: line I/O on stdin/stdout, stderr drained in the background."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "katago",
        ready_marker: str | None = None,
        start_timeout: float = 600.0,
        stderr_log: Path | None = None,
        tail_lines: int = 400,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        on_stderr: Callable[[str], None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.ready_marker = ready_marker
        self.start_timeout = start_timeout
        self.stderr_tail: deque[str] = deque(maxlen=tail_lines)
        self._stderr_log = _stderr_handler(stderr_log) if stderr_log else None
        self._env = engine_environment(env)
        self._cwd = cwd
        self._on_stderr = on_stderr
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._stderr_task: asyncio.Task[None] | None = None
        self.started_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def tail_text(self, lines: int = 60) -> str:
        return "\n".join(list(self.stderr_tail)[-lines:])

    async def start(self) -> None:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=STREAM_LIMIT,
                preexec_fn=functools.partial(_child_setup, os.getpid()),
                start_new_session=True,
                env=self._env,
                cwd=self._cwd,
            )
        except FileNotFoundError:
            raise EngineStartError(f"{self.argv[0]} does not exist") from None
        except PermissionError:
            raise EngineStartError(f"{self.argv[0]} is not executable") from None
        except OSError as exc:  # EAGAIN, ENOMEM, EMFILE: may pass, so worth a retry
            raise EngineStartError(f"could not spawn {self.argv[0]}: {exc.strerror or exc}") from None
        self.started_at = time.monotonic()
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name=f"{self.name}-stderr")
        if self.ready_marker is None:
            self._ready.set()
            return
        waiter = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self._proc.wait())
        done, _ = await asyncio.wait({waiter, exited}, timeout=self.start_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        exited.cancel()
        if self._ready.is_set():
            return
        if self._proc.returncode is not None:
            await self._finish_stderr()
            cause = diagnose(self.tail_text(), self._proc.returncode)
            raise EngineStartError(f"{self.name} died before it was ready: {cause}", exited=True)
        await self.kill()
        raise EngineStartError(
            f"{self.name} was not ready within {self.start_timeout:.0f} s "
            f"(last output: {self.tail_text(1) or 'none'})"
        )

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        try:
            while True:
                try:
                    raw = await self._proc.stderr.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    continue
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.stderr_tail.append(line)
                if self._stderr_log:
                    self._stderr_log.emit(logging.makeLogRecord({"msg": line,
                                                                 "levelno": logging.INFO}))
                if self._on_stderr:
                    self._on_stderr(line)
                if self.ready_marker and self.ready_marker in line:
                    self._ready.set()
        finally:
            # Nothing else writes the log: release its file as soon as the engine's stderr
            # ends, whether or not anyone calls close() (a killed and replaced engine).
            self._close_log()

    def _close_log(self) -> None:
        handler, self._stderr_log = self._stderr_log, None
        if handler is not None:
            handler.close()

    async def _finish_stderr(self) -> None:
        if self._stderr_task:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 2.0)

    async def send_line(self, line: str) -> None:
        if not self.alive or self._proc is None or self._proc.stdin is None:
            raise EngineTerminatedError(f"{self.name} is not running")
        try:
            self._proc.stdin.write(line.encode() + b"\n")
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise EngineTerminatedError(f"{self.name} closed its input (it died)") from None

    def write_nowait(self, line: str) -> None:
        """Queue a line on the pipe without waiting for it to drain; ignored once dead."""
        if self.alive and self._proc is not None and self._proc.stdin is not None \
                and not self._proc.stdin.is_closing():
            self._proc.stdin.write(line.encode() + b"\n")

    def input_buffered(self) -> int:
        """Bytes queued for the engine's stdin that the pipe could not take yet."""
        stdin = self._proc.stdin if self._proc is not None else None
        if stdin is None or stdin.transport.is_closing():
            return 0
        return stdin.transport.get_write_buffer_size()

    async def read_line(self) -> str | None:
        """The next stdout line, or None at end of output (the process exited)."""
        assert self._proc is not None and self._proc.stdout is not None
        raw = await self._proc.stdout.readline()
        if not raw or not raw.endswith(b"\n"):
            return None  # the end; a line cut off by a crash is not a line
        return raw.decode(errors="replace").rstrip("\r\n")

    async def wait(self) -> int:
        assert self._proc is not None
        code = await self._proc.wait()
        await self._finish_stderr()
        return code

    def signal(self, sig: int) -> None:
        if self.alive and self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    async def kill(self, wait: float = 10.0) -> None:
        """SIGKILL, and wait for the exit (bounded: a process stuck in a driver call may not
        die at once, and the caller must not hang with it)."""
        self.signal(signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), wait)

    async def close(self, grace: float = 10.0, term_grace: float = 5.0) -> int | None:
        """Close stdin and let the engine finish; escalate to SIGTERM, then SIGKILL."""
        if self._proc is None:
            return None
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            with contextlib.suppress(Exception):
                self._proc.stdin.close()
        for sig, wait_for in ((None, grace), (signal.SIGTERM, term_grace), (signal.SIGKILL, 30.0)):
            if sig is not None:
                self.signal(sig)
            try:
                await asyncio.wait_for(self._proc.wait(), wait_for)
                break
            except TimeoutError:
                continue
        await self._finish_stderr()
        if self._stderr_task and not self._stderr_task.done():
            self._stderr_task.cancel()
        self._close_log()
        return self._proc.returncode

    async def __aenter__(self) -> EngineProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
