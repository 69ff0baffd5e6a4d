"""``katapool config generate | presets``."""

from __future__ import annotations

import argparse
from pathlib import Path

from katapool.cli.common import (
    EngineChoice,
    add_engine_args,
    engine_from_args,
    err,
    model_from_args,
    out,
)
from katapool.cli.shared_options import add_device, add_override_config, add_preset, device_spec
from katapool.config.build import build_config
from katapool.config.explain import explain_text
from katapool.config.generate import parse_override_pairs
from katapool.config.preset_files import preset_names
from katapool.config.presets import load_preset
from katapool.config.settings import Mode
from katapool.errors import ConfigError, KatapoolError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cfg = sub.add_parser("config", help="generate KataGo configs per device")
    csub = cfg.add_subparsers(dest="config_cmd", required=True, metavar="COMMAND")
    gen = csub.add_parser("generate", help="write a KataGo config for a device")
    gen.add_argument("--mode", choices=[m.value for m in Mode], required=True)
    add_device(gen, "device(s) the config drives (default: the best device found)")
    add_preset(gen, "desktop")
    gen.add_argument("--members", type=int, default=1,
                     help="engine processes sharing this machine (splits the NN cache budget)")
    add_override_config(gen, "override KataGo settings, key=value[,key=value] (repeatable)",
                        also=("--set",))
    gen.add_argument("--tune", action="store_true",
                     help="measure this device first, as `katapool prepare --measure` does for "
                          "this mode (kept as a profile; reused while up to date)")
    gen.add_argument("--tune-visits", type=int, default=100, help=argparse.SUPPRESS)
    gen.add_argument("--tune-positions", type=int, default=3, help=argparse.SUPPRESS)
    gen.add_argument("--explain", action="store_true",
                     help="print where useFP16, nnMaxBatchSize, the thread counts and the NN "
                          "cache size come from (measured profile, preset, rule or override) "
                          "and why; the config itself goes only to -o")
    gen.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    add_engine_args(gen)
    gen.set_defaults(func=cmd_generate)
    pre = csub.add_parser("presets", help="list presets")
    pre.set_defaults(func=cmd_presets)


def cmd_generate(args: argparse.Namespace) -> int:
    if args.members < 1:
        raise ConfigError(f"--members must be at least 1 (got {args.members})")
    load_preset(args.preset)  # fail fast on a bad name, before touching the engine
    overrides = parse_override_pairs(args.override_config)
    engine = engine_from_args(args)
    model = model_from_args(args, engine) if (args.tune or args.model) else _optional_model(args, engine)
    if args.tune:
        assert model is not None
        _tune(args, engine, model)
    built = build_config(mode=Mode(args.mode), info=engine.info, model=model,
                         device_spec=device_spec(args), preset=args.preset,
                         members_on_machine=args.members, overrides=overrides)
    for note in built.notes:
        err.print(f"[yellow]{note}[/]", soft_wrap=True)
    if args.explain:
        out.out(explain_text(built), end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(built.text)
        err.print(f"wrote {args.output} ({args.mode}, {engine.info.backend.label}, "
                  f"{', '.join(d.spec for d in built.devices)}, preset {args.preset})")
    elif not args.explain:
        out.out(built.text, end="")
    return 0


def _tune(args: argparse.Namespace, engine: EngineChoice, model: Path) -> None:
    from katapool.config.measure_profile import MeasureOptions, measure_devices
    from katapool.devices import discover_devices, parse_device_spec
    from katapool.engine.backend import Backend
    from katapool.engine.process import tools_stop_on_sigterm

    report = discover_devices(engine.info.path, model,
                              opencl=engine.info.backend is Backend.OPENCL)
    devices = parse_device_spec(device_spec(args), report)
    opts = MeasureOptions(modes=[Mode(args.mode)], visits=args.tune_visits,
                          positions=args.tune_positions, preset=args.preset)
    with tools_stop_on_sigterm():
        measured = measure_devices(engine.info, model, devices[:1], report, opts, err)
    for result in measured:
        values = ", ".join(f"{k} = {str(v).lower()}" for k, v in result.profile.values().items())
        err.print(f"{result.device} ({result.mode.value}): {values} ({result.action}, "
                  f"{result.file})")


def _optional_model(args: argparse.Namespace, engine: EngineChoice) -> Path | None:
    """A network only helps (OpenCL device listing); generating works without one."""
    try:
        return model_from_args(args, engine)
    except KatapoolError:
        return None


def cmd_presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        out.print(f"[bold]{name}[/]: {load_preset(name).description}")
    return 0
