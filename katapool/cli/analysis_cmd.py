"""``katapool analysis``: a drop-in for ``katago analysis`` that runs a pool.

It takes ``katago analysis``'s own arguments, so a program that launches
``<exe> analysis -model M -config C -override-config homeDataDir=...`` (KaTrain does) can
launch katapool instead, unchanged. Stdout carries only protocol lines; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from katapool import paths
from katapool.cli.common import parse_gpus
from katapool.engine.discovery import resolve_engine, resolve_model
from katapool.engine.probe import probe_version
from katapool.engine.process import STREAM_LIMIT
from katapool.errors import ConfigError
from katapool.pool import Pool, PoolPolicy
from katapool.pool.launch import LaunchSpec, build_factories

READY_LINE = "Started, ready to begin handling requests"
log = logging.getLogger("katapool")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "analysis", help="drop-in for `katago analysis`, running a pool of engines",
        description="Reads KataGo analysis queries (JSON lines) on stdin and answers on stdout, "
                    "like `katago analysis`, across a supervised pool of engines.")
    # katago analysis's own arguments, spelled as KataGo spells them.
    p.add_argument("-model", help="network .bin.gz (default: the engine's bundled network)")
    p.add_argument("-human-model", dest="human_model", help="human SL network")
    p.add_argument("-config", action="append", default=[], type=Path,
                   help="KataGo config file(s); default: generated per device")
    p.add_argument("-override-config", dest="override_config", action="append", default=[],
                   help="KataGo overrides, key=value[,key=value]")
    p.add_argument("-analysis-threads", dest="analysis_threads", type=int)
    p.add_argument("-quit-without-waiting", dest="quit_without_waiting", action="store_true",
                   help="at end of input, stop at once instead of finishing outstanding queries")
    # katapool's own.
    p.add_argument("--gpus", help="GPU indices, one member each: 0,1")
    p.add_argument("--members", type=int, help="number of engine processes (default: one per GPU)")
    p.add_argument("--katago", metavar="PATH", help="KataGo binary")
    p.add_argument("--preset", default="server", help="preset for generated configs")
    p.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                   help="pool policy setting, e.g. functional_deadline=30 (repeatable)")
    p.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_analysis)


class _QuietForGuis(logging.Filter):
    """GUIs read an engine's stderr: KaTrain reports "KataGo Engine Failed" on any line with
    `what()` or `Uncaught exception`. A member katapool restarts on its own is not a failure
    of the engine the GUI sees, so those words never reach stderr (the full text is in the
    member's log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        cleaned = text.replace("what():", "engine said:").replace("what()", "engine said")
        cleaned = cleaned.replace("Uncaught exception", "uncaught error")
        if cleaned != text:
            record.msg, record.args = cleaned, None
        return True


def _policy(pairs: list[str]) -> PoolPolicy:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"bad --policy {pair!r}: expected key=value")
        values[key.strip()] = value.strip()
    try:
        return PoolPolicy.model_validate(values)
    except ValueError as exc:
        raise ConfigError(f"bad --policy: {exc}".replace("\n", " ")) from None


def cmd_analysis(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("katapool: %(levelname)s %(message)s"))
    handler.addFilter(_QuietForGuis())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    policy = _policy(args.policy)
    gpus = parse_gpus(args.gpus)
    members = args.members or (len(gpus) if gpus else 1)
    if members < 1:
        raise ConfigError(f"--members must be at least 1 (got {members})")
    for cfg in args.config:
        if not cfg.is_file():
            raise ConfigError(f"-config {cfg}: no such file")
    resolved = resolve_engine(args.katago)
    info = probe_version(resolved.path)
    model = resolve_model(args.model, resolved)
    human = resolve_model(args.human_model) if args.human_model else None
    spec = LaunchSpec(info=info, model=model, human_model=human, configs=args.config,
                      overrides=args.override_config, analysis_threads=args.analysis_threads,
                      gpus=gpus, members=members, preset=args.preset,
                      start_timeout=policy.start_timeout)
    with tempfile.TemporaryDirectory(dir=_run_root(), prefix="analysis-") as run_dir:
        factories = build_factories(spec, Path(run_dir))
        return asyncio.run(_serve(factories, policy, info.version, info.git_revision,
                                  args.quit_without_waiting))


def _run_root() -> Path:
    root = paths.data_dir() / "run"
    root.mkdir(parents=True, exist_ok=True)
    return root


async def _serve(factories: list[Any], policy: PoolPolicy, version: str, git_hash: str | None,
                 quit_without_waiting: bool) -> int:
    loop = asyncio.get_running_loop()
    out = await _open_stdout(loop)
    pool = Pool(factories, policy, version=version, git_hash=git_hash)
    session = pool.session(out.write)
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    try:
        # Like KataGo, announce readiness once every member is ready (or has failed), so
        # that the first burst of queries spreads over the whole pool.
        if not await _unless_stopped(pool.start(wait="all"), stopped):
            return 130
        print(READY_LINE, file=sys.stderr, flush=True)
        log.info("pool: %s", json.dumps(pool.status()))
        end_of_input = await _start_stdin_reader(loop, session.submit)
        await _unless_stopped(end_of_input.wait(), stopped)
        if not quit_without_waiting and not stopped.is_set():
            # Like KataGo: finish outstanding work at end of input (a signal cuts it short).
            await _unless_stopped(pool.drain(), stopped)
    finally:
        await pool.close()
        await out.close()
    return 0


async def _unless_stopped(work: Any, stopped: asyncio.Event) -> bool:
    """Run ``work`` unless a stop signal comes first; True if it finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stopped.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()  # re-raise its error, if any
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def _start_stdin_reader(loop: asyncio.AbstractEventLoop,
                             submit: Callable[[str], None]) -> asyncio.Event:
    """Feed stdin lines to ``submit``; the event is set at end of input. Stdin is read as an
    asyncio pipe (no thread hop per line), or on a thread where it is not a pipe."""
    end = asyncio.Event()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0))
    except (ValueError, OSError):
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        _start_stdin_thread(loop, lines)

        async def drain_queue() -> None:
            while (line := await lines.get()) is not None:
                if line.strip():
                    submit(line)
            end.set()

        _background.add(asyncio.create_task(drain_queue()))
        return end

    async def pump() -> None:
        while True:
            try:
                raw = await reader.readline()
            except ValueError:  # a line beyond the limit: answered as unparseable
                submit("{")
                continue
            if not raw:
                end.set()
                return
            if raw.strip():
                submit(raw.decode("utf-8", errors="replace"))

    _background.add(asyncio.create_task(pump()))
    return end


_background: set[asyncio.Task[None]] = set()


def _start_stdin_thread(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    def run() -> None:
        stream = sys.stdin.buffer
        for raw in iter(stream.readline, b""):
            loop.call_soon_threadsafe(lines.put_nowait, raw.decode("utf-8", errors="replace"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=run, name="stdin", daemon=True).start()


async def _open_stdout(loop: asyncio.AbstractEventLoop) -> _PipeWriter | _StdoutWriter:
    """Stdout as a non-blocking asyncio pipe (written at once, buffered if the reader is slow);
    a writer thread where stdout is a regular file."""
    try:
        transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0))
    except (ValueError, OSError):
        return _StdoutWriter()
    return _PipeWriter(transport)


class _PipeWriter:
    def __init__(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport

    def write(self, message: dict[str, Any]) -> None:
        if not self.transport.is_closing():
            self.transport.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def close(self) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while self.transport.get_write_buffer_size() and not self.transport.is_closing() \
                and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        self.transport.close()


class _StdoutWriter:
    """Protocol lines to stdout from a writer thread, so a slow reader never stalls the pool."""

    def __init__(self) -> None:
        self._fd = sys.stdout.fileno()
        self._thread_queue: list[bytes] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="stdout", daemon=True)
        self._thread.start()

    def write(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._cond:
            self._thread_queue.append(data)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._thread_queue and not self._closed:
                    self._cond.wait()
                batch, self._thread_queue = self._thread_queue, []
                closed = self._closed
            if batch:
                with contextlib.suppress(BrokenPipeError, OSError):
                    self._write_all(b"".join(batch))
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
        await asyncio.to_thread(self._thread.join, 30)
