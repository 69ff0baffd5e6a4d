"""What a protocol command (`katapool gtp`, `katapool analysis`) starts: its engine, networks
and each member's config, from the start cache when nothing they came from has changed
(katapool.config.startcache), else worked out as always and stored for the next start."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from katapool.config import startcache
from katapool.config.startcache import MemberSetup, StartPlan
from katapool.devices.fingerprint import machine_fingerprint
from katapool.engine.probe import EngineInfo

SetupFn = Callable[[EngineInfo, Path, Path | None], list[MemberSetup]]


def plan_start(args: argparse.Namespace, command: str, key_args: dict[str, Any],
               setups: SetupFn) -> StartPlan:
    """The plan for this command line. ``key_args``: the arguments that change it besides
    `--katago`, `-model`, `-human-model` and `-config` (included here); ``setups`` works out
    the members' setups for an engine and networks (on a miss only)."""
    key = startcache.start_key(command, {
        **key_args, "katago": args.katago, "model": args.model, "human_model": args.human_model,
        "config": [str(c) for c in args.config]})
    plan = startcache.load(key)
    if plan is not None:
        return plan
    # Worked out as always; these imports are what a hit saves.
    from katapool import paths
    from katapool.cli.common import resolve_katago_args
    from katapool.config.preset_files import presets_dir
    from katapool.engine.tuning import index_path

    machine = machine_fingerprint()
    # profiles_dir: a profile measured, re-measured or removed changes the generated configs.
    watched = [paths.manifest_path(), paths.tuning_dir(), paths.profiles_dir(), index_path(),
               *args.config]
    if "preset" in key_args:
        watched.append(presets_dir() / f"{key_args['preset']}.yaml")
    before = startcache.stamps(watched)
    found = resolve_katago_args(args)
    plan = StartPlan(found.info, found.model, found.human_model,
                     tuple(setups(found.info, found.model, found.human_model)))
    deps = list(watched)
    if found.origin == "PATH":  # a katago put earlier on PATH would be found instead
        deps += [Path(d) for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    startcache.save(key, plan, deps, before, machine)
    return plan
