"""Shared CLI plumbing: consoles, engine/model resolution, error reporting."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from katapool.cli.shared_options import add_model
from katapool.engine.discovery import ResolvedEngine, resolve_engine, resolve_model
from katapool.engine.probe import EngineInfo, probe_version
from katapool.errors import ConfigError

# Stdout is for results (and protocol, in the protocol commands); everything else on stderr.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def add_engine_args(parser: argparse.ArgumentParser, model: bool = True) -> None:
    parser.add_argument("--katago", metavar="PATH",
                        help="KataGo binary (default: $KATAPOOL_KATAGO, the installed engine, PATH)")
    if model:
        add_model(parser, "network .bin.gz (default: $KATAPOOL_MODEL or the engine's bundled one)")


@dataclass
class EngineChoice:
    resolved: ResolvedEngine
    info: EngineInfo


def engine_from_args(args: argparse.Namespace) -> EngineChoice:
    resolved = resolve_engine(getattr(args, "katago", None))
    return EngineChoice(resolved, probe_version(resolved.path))


def model_from_args(args: argparse.Namespace, engine: EngineChoice | None) -> Path:
    return resolve_model(getattr(args, "model", None), engine.resolved if engine else None)


@dataclass
class KataGoArgs:
    """What `katago analysis` / `katago gtp` style arguments resolve to."""

    info: EngineInfo
    model: Path
    human_model: Path | None


def resolve_katago_args(args: argparse.Namespace) -> KataGoArgs:
    """Check `-config` files, then find the engine (`--katago`), `-model` and `-human-model`."""
    for cfg in args.config:
        if not cfg.is_file():
            raise ConfigError(f"-config {cfg}: no such file")
    resolved = resolve_engine(args.katago)
    info = probe_version(resolved.path)
    model = resolve_model(args.model, resolved)
    human = resolve_model(args.human_model) if args.human_model else None
    return KataGoArgs(info, model, human)
