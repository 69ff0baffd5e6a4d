"""Shared CLI plumbing: consoles, engine/model resolution, error reporting."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from katapool.cli.shared_options import add_katago, add_model
from katapool.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError
    from rich.console import Console

    from katapool.engine.discovery import ResolvedEngine
    from katapool.engine.probe import EngineInfo

    # Stdout is for results (and protocol, in the protocol commands); everything else on stderr.
    out: Console
    err: Console


def __getattr__(name: str) -> Console:
    """``out`` and ``err``, made on first use: the protocol commands (`gtp`, `analysis`) start
    without importing rich."""
    if name not in ("out", "err"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True) if name == "out" \
        else Console(stderr=True, highlight=False)
    globals()[name] = console
    return console


def add_engine_args(parser: argparse.ArgumentParser, model: bool = True) -> None:
    add_katago(parser, help="KataGo binary (default: $KATAPOOL_KATAGO, the installed engine, "
               "PATH)")
    if model:
        add_model(parser, "network .bin.gz (default: $KATAPOOL_MODEL or the engine's bundled one)")


@dataclass
class EngineChoice:
    resolved: ResolvedEngine
    info: EngineInfo


def engine_from_args(args: argparse.Namespace, fresh: bool = False) -> EngineChoice:
    """The engine the arguments name, probed (``fresh``: now, for a health check)."""
    from katapool.engine.discovery import resolve_engine
    from katapool.engine.probe import probe_version

    resolved = resolve_engine(getattr(args, "katago", None))
    return EngineChoice(resolved, probe_version(resolved.path, fresh=fresh))


def make_folder(folder: Path, failure: str) -> None:
    """Make ``folder`` now, before any long work; if it cannot be, ``failure`` and why (a file in
    the way is named: mkdir's own "File exists" names no problem)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                       None)
        why = f"{blocker} is a file" if blocker else exc.strerror or str(exc)
        raise ConfigError(f"{failure} ({why})") from None


def validation_message(exc: ValidationError) -> str:
    """The first problem pydantic found, in one line (its own text runs to several lines and a
    URL)."""
    return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")


def check_named_engine(args: argparse.Namespace) -> None:
    """An engine named by --katago must exist, also where this run may not start it (an
    export without its engine check): a wrong path is said, not passed over."""
    if getattr(args, "katago", None):
        from katapool.engine.discovery import resolve_engine

        resolve_engine(args.katago)


def model_from_args(args: argparse.Namespace, engine: EngineChoice | None) -> Path:
    from katapool.engine.discovery import resolve_model

    return resolve_model(getattr(args, "model", None), engine.resolved if engine else None)


@dataclass
class KataGoArgs:
    """What `katago analysis` / `katago gtp` style arguments resolve to."""

    info: EngineInfo
    model: Path
    human_model: Path | None
    origin: str | None = None  # where the engine was found (katapool.engine.discovery.Origin)


def resolve_katago_args(args: argparse.Namespace) -> KataGoArgs:
    """Check `-config` files, then find the engine (`--katago`), `-model` and `-human-model`."""
    # Imported here: the engine manifest's models cost a GUI's start-up when the start
    # cache (katapool.config.startcache) already knows the answer.
    from katapool.engine.discovery import resolve_engine, resolve_model
    from katapool.engine.probe import probe_version

    for cfg in args.config:
        if cfg.is_dir():
            raise ConfigError(f"-config {cfg} is a folder: give the KataGo .cfg file")
        if not cfg.is_file():
            raise ConfigError(f"-config {cfg}: no such file")
    resolved = resolve_engine(args.katago)
    info = probe_version(resolved.path)
    model = resolve_model(args.model, resolved)
    human = resolve_model(args.human_model) if args.human_model else None
    return KataGoArgs(info, model, human, resolved.origin)
