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
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from katapool import paths
from katapool.cli.shared_options import (
    add_config,
    add_device,
    add_human_model,
    add_katago,
    add_model,
    add_override_config,
    add_policy,
    add_preset,
    gpu_indices,
)
from katapool.cli.startplan import plan_start
from katapool.cli.stdio import open_stdout, start_stdin_reader
from katapool.engine.analysis_process import READY_MARKER
from katapool.engine.probe import EngineInfo
from katapool.errors import ConfigError
from katapool.pool import Pool, PoolPolicy
from katapool.pool.launch import LaunchSpec, build_factories, member_setups
from katapool.protocol.analysis import error_response

log = logging.getLogger("katapool")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "analysis", help="drop-in for `katago analysis`, running a pool of engines",
        description="Reads KataGo analysis queries (JSON lines) on stdin and answers on stdout, "
                    "like `katago analysis`, across a supervised pool of engines.")
    # katago analysis's own arguments, spelled as KataGo spells them (or with two dashes).
    add_model(p, "network .bin.gz (default: the engine's bundled network)")
    add_human_model(p)
    add_config(p, "KataGo config file(s), repeatable (default: generated per device)")
    add_override_config(p)
    p.add_argument("-analysis-threads", dest="analysis_threads", type=int)
    p.add_argument("-quit-without-waiting", dest="quit_without_waiting", action="store_true",
                   help="at end of input, stop at once instead of finishing outstanding queries")
    # katapool's own.
    add_device(p, "devices, one member each (default: one member on the best device found)")
    p.add_argument("--members", type=int, help="number of engine processes (default: one per "
                   "listed device, else 1)")
    add_katago(p, help="KataGo binary")
    add_preset(p, "server")
    add_policy(p)
    p.add_argument("--measure", action="store_true",
                   help="first measure useFP16, nnMaxBatchSize and numSearchThreads for this "
                        "engine, network and device(s) (`katapool prepare --measure --mode "
                        "analysis`: minutes the first time, nothing while a current profile "
                        "exists); the generated configs use them")
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
        # Diagnoses already say "engine said: what(): ...": one "engine said", not two.
        cleaned = text.replace("engine said: what():", "engine said:")
        cleaned = cleaned.replace("what():", "engine said:").replace("what()", "engine said")
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
    except ValidationError as exc:
        raise ConfigError(f"bad --policy: {_first_problem(exc)} (`--policy help` lists every "
                          "key)") from None


def _first_problem(exc: ValidationError) -> str:
    # pydantic's own text runs to several lines and a URL: one line, key and value, instead.
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    return f"{key}={first.get('input')!r}: {first['msg']}"


def cmd_analysis(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("katapool: %(levelname)s %(message)s"))
    handler.addFilter(_QuietForGuis())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    policy = _policy(args.policy)
    gpus = gpu_indices(args, "katapool analysis")
    members = args.members or (len(gpus) if gpus else 1)
    if members < 1:
        raise ConfigError(f"--members must be at least 1 (got {members})")
    if args.analysis_threads is not None and args.analysis_threads < 1:
        raise ConfigError(f"-analysis-threads must be at least 1 (got {args.analysis_threads})")
    if args.override_config:
        # Imported only when needed: a plain start does without config validation's models.
        from katapool.config.overrides import check_override_arg
        from katapool.config.settings import Mode

        for override in args.override_config:
            check_override_arg(override, Mode.ANALYSIS)

    def spec_for(info: EngineInfo, model: Path, human: Path | None) -> LaunchSpec:
        return LaunchSpec(info=info, model=model, human_model=human, configs=args.config,
                          overrides=args.override_config, analysis_threads=args.analysis_threads,
                          gpus=gpus, members=members, preset=args.preset,
                          start_timeout=policy.start_timeout)

    if args.measure:
        from katapool.cli.prepare_cmd import measure_before_start
        from katapool.config.settings import Mode

        measure_before_start(args, Mode.ANALYSIS)
    plan = plan_start(args, "analysis", {"override_config": args.override_config, "gpus": gpus,
                                         "members": members, "preset": args.preset},
                      lambda info, model, human: member_setups(spec_for(info, model, human)))
    info = plan.info
    spec = spec_for(info, plan.model, plan.human_model)
    with tempfile.TemporaryDirectory(dir=paths.run_dir(), prefix="analysis-") as run_dir:
        factories = build_factories(spec, Path(run_dir), setups=list(plan.members))
        return asyncio.run(_serve(factories, policy, info.version, info.git_revision,
                                  args.quit_without_waiting))


async def _serve(factories: list[Any], policy: PoolPolicy, version: str, git_hash: str | None,
                 quit_without_waiting: bool) -> int:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    out = await open_stdout(loop, on_stalled=stopped.set)  # a reader gone silent ends the run
    pool = Pool(factories, policy, version=version, git_hash=git_hash)
    session = pool.session(out.write)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    try:
        # Like KataGo, announce readiness once every member is ready (or has failed), so
        # that the first burst of queries spreads over the whole pool.
        if not await _unless_stopped(pool.start(wait="all"), stopped):
            return 130
        print(READY_MARKER, file=sys.stderr, flush=True)
        log.info("pool: %s", json.dumps(pool.status()))
        end_of_input = await start_stdin_reader(loop, session.submit,
                                                on_too_long=lambda limit: out.write(_too_long(limit)))
        await _unless_stopped(end_of_input.wait(), stopped)
        if not quit_without_waiting and not stopped.is_set():
            # Like KataGo: finish outstanding work at end of input (a signal cuts it short).
            await _unless_stopped(pool.drain(), stopped)
    finally:
        await pool.close()
        await out.close()
    return 1 if out.stalled else 0


def _too_long(limit: int) -> dict[str, Any]:
    """The answer to a line over katapool's input limit (KataGo has none): one parse error,
    for the whole line."""
    return error_response(f"line of more than {limit >> 20} MiB, dropped whole - could not parse "
                          f"input line as json request")


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
