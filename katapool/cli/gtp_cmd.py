"""``katapool gtp``: the engine command to paste into Sabaki, Lizzie or LizGoban.

Stdout carries only GTP; katapool's own notes go to stderr (safe for Lizzie, which reads
stderr as stdout); the engine's stderr goes to a log file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import select
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from katapool import paths
from katapool.cli.shared_options import (
    add_config,
    add_device,
    add_human_model,
    add_katago,
    add_model,
    add_override_config,
    add_preset,
    device_spec,
)
from katapool.cli.startplan import plan_start
from katapool.cli.stdio import open_stdout, start_stdin_reader
from katapool.config.startcache import MemberSetup, StartPlan
from katapool.engine.probe import EngineInfo
from katapool.engine.process import EngineProcess, prune_logs
from katapool.errors import ConfigError
from katapool.gtp.bridge import READY_LINE, BridgeOptions, GtpBridge, safe_for_guis

log = logging.getLogger("katapool")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gtp", help="GTP engine for Sabaki, Lizzie, LizGoban (KataGo behind, restarted on crash)",
        description="Speaks GTP on stdin/stdout exactly as `katago gtp` does, with a KataGo "
                    "configured for your device behind it; if KataGo dies or hangs it is "
                    "restarted and the game restored without the GUI noticing.")
    add_model(p, "network (default: the engine's bundled one)")
    add_human_model(p)
    add_config(p, "your own KataGo GTP config(s), repeatable (default: generated for the device)")
    add_override_config(p)
    add_device(p, "device(s) this one engine uses (default: the best device found)")
    add_preset(p, "desktop", "preset for the generated config")
    add_katago(p, help="KataGo binary")
    p.add_argument("--min-interval", type=int, metavar="CS",
                   help="analysis reports no more often than this (centiseconds), for remote links")
    p.add_argument("--max-moves", type=int, metavar="N",
                   help="at most N candidate moves per analysis report, for remote links")
    p.add_argument("--command-timeout", type=float, default=60.0,
                   help="seconds before an unanswered command (not a search) means a stuck engine")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_gtp)


class _SafeForGuis(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = safe_for_guis(record.getMessage()), None
        return True


def cmd_gtp(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("katapool: %(message)s"))
    handler.addFilter(_SafeForGuis())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    for value, flag in ((args.min_interval, "--min-interval"), (args.max_moves, "--max-moves")):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value})")
    if not 0 < args.command_timeout < math.inf:  # 0 or less: every command looks stuck
        raise ConfigError(f"--command-timeout is seconds, more than 0 (got {args.command_timeout})")
    if args.override_config:
        # Imported only when needed: a GUI's plain start does without pydantic.
        from katapool.config.overrides import check_override_arg
        from katapool.config.settings import Mode

        for override in args.override_config:
            check_override_arg(override, Mode.GTP)
    spec = device_spec(args)
    plan = plan_start(args, "gtp", {"override_config": args.override_config, "device": spec,
                                    "preset": args.preset},
                      lambda info, model, human: [_setup(args, info, model, spec)])
    info, model = plan.info, plan.model
    log_dir = paths.data_dir() / "logs" / "gtp"
    log_dir.mkdir(parents=True, exist_ok=True)
    prune_logs(log_dir)  # each run leaves engine logs (ours and KataGo's): keep the newest
    with tempfile.TemporaryDirectory(dir=paths.run_dir(), prefix="gtp-") as run_dir:
        argv = _engine_argv(args, plan, Path(run_dir))
        options = BridgeOptions(command_timeout=args.command_timeout,
                                min_interval=args.min_interval, max_moves=args.max_moves)
        return asyncio.run(_serve(argv, options, log_dir / f"{os.getpid()}-katago.stderr.log",
                                  info, model))


def _setup(args: argparse.Namespace, info: EngineInfo, model: Path, spec: str) -> MemberSetup:
    """The engine's config: generated for the device, or the caller's own with katapool's
    prepared OpenCL tuning added where it names none."""
    if args.config:
        from katapool.pool.launch import prepared_tuning_override

        tuning = prepared_tuning_override(info, model, args.config, args.override_config)
        return MemberSetup(None, (tuning,) if tuning else ())
    from katapool.config.build import build_config
    from katapool.config.settings import Mode

    built = build_config(mode=Mode.GTP, info=info, model=model, device_spec=spec,
                         preset=args.preset)
    return MemberSetup(built.text)


def _engine_argv(args: argparse.Namespace, plan: StartPlan, run_dir: Path) -> list[str]:
    setup = plan.members[0]
    argv = [str(plan.info.path), "gtp", "-model", str(plan.model)]
    if plan.human_model:
        argv += ["-human-model", str(plan.human_model)]
    if setup.config_text is None:
        for cfg in args.config:
            argv += ["-config", str(cfg)]
        for extra in setup.overrides:
            argv += ["-override-config", extra]
    else:
        cfg_path = run_dir / "gtp.cfg"
        cfg_path.write_text(setup.config_text)
        argv += ["-config", str(cfg_path)]
    for override in args.override_config:
        argv += ["-override-config", override]
    return argv


async def _serve(argv: list[str], options: BridgeOptions, stderr_log: Path, info: EngineInfo,
                 model: Path) -> int:
    loop = asyncio.get_running_loop()
    # A GUI that stops reading its answers ends the session (only the bridge writes stdout).
    out = await open_stdout(loop, on_stalled=lambda: bridge.finished.set())
    first_start = {"on": True}

    notes = StderrLines(sys.stderr.fileno())

    def say(line: str) -> None:
        notes.write(safe_for_guis(line) + "\n")

    def forward(line: str) -> None:
        # The first start's own messages (model loading, TensorRT builds) reach the GUI's
        # console, made safe; after that, only the log file has them.
        if first_start["on"] and READY_LINE not in line and line.strip():
            say(line)

    async def spawn(first: bool) -> EngineProcess:
        engine = EngineProcess(argv, name="katago gtp", ready_marker="GTP ready",
                               start_timeout=900.0, stderr_log=stderr_log,
                               on_stderr=forward if first else None)
        try:
            await engine.start()
        finally:
            first_start["on"] = False
        return engine

    say(f"katapool: starting KataGo {info.version} ({info.backend.value}) with {model.name}; "
        f"engine log: {stderr_log}")
    bridge = GtpBridge(spawn, out.write_raw, say, options)
    loop.add_signal_handler(signal.SIGTERM, bridge.finished.set)
    try:
        await bridge.start()
        end = await start_stdin_reader(loop, bridge.on_gui_line, keep_blank=True)
        ended = asyncio.ensure_future(end.wait())
        finished = asyncio.ensure_future(bridge.finished.wait())
        await asyncio.wait({ended, finished}, return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():
            bridge.end_of_input()
            await bridge.finished.wait()
        ended.cancel()
    finally:
        # The GUI sees stdout close as soon as the last answer is out (Sabaki and Lizzie wait
        # for it after `quit`); the engine is stopped after that.
        await out.close()
        await notes.drain(5.0)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        await bridge.close()
    return 1 if out.stalled else 0


class StderrLines:
    """Whole lines to stderr without blocking the event loop, even when the GUI merged stderr
    into a pipe that asyncio has made non-blocking (Lizzie) and the pipe is full: what does
    not fit waits here, in order, and goes out when the pipe has room. Each write is one
    line of at most ``PIPE_BUF`` bytes, which a pipe takes whole or not at all, so a note
    never splits a GTP line that shares the pipe."""

    MAX_LINE = select.PIPE_BUF
    MAX_PENDING = 1 << 20  # a GUI that never reads loses notes, not memory

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def write(self, text: str) -> None:
        data = text.encode(errors="replace")
        if len(data) > self.MAX_LINE:
            data = data[:self.MAX_LINE - 4] + b"...\n"
        if self.pending_bytes + len(data) > self.MAX_PENDING:
            self.dropped += 1
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if len(self.pending) == 1 or self._loop is None:
            self._flush()

    def _flush(self) -> None:
        while self.pending:
            try:
                os.write(self.fd, self.pending[0])
            except BlockingIOError:
                self._watch()
                return
            except OSError:  # stderr closed: nobody to tell
                self.pending.clear()
                self.pending_bytes = 0
                break
            self.pending_bytes -= len(self.pending.popleft())
        self._unwatch()

    def _watch(self) -> None:
        if self._loop is None:
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                loop = asyncio.get_running_loop()
                loop.add_writer(self.fd, self._flush)
                self._loop = loop

    def _unwatch(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self.fd)
            self._loop = None

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until what is pending is out."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self._flush()
            await asyncio.sleep(0.01)
