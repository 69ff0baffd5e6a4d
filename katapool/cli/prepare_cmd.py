"""``katapool prepare``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.table import Table

from katapool.cli.common import add_engine_args, engine_from_args, err, model_from_args, out
from katapool.cli.shared_options import add_device, add_preset, device_spec
from katapool.config.build import build_config
from katapool.config.settings import Mode
from katapool.devices import Device, DeviceKind, discover_devices, parse_device_spec
from katapool.devices.model import DeviceReport
from katapool.engine.backend import Backend
from katapool.engine.prepare import PrepareResult, prepare_opencl, prepare_tensorrt
from katapool.engine.probe import EngineInfo, OpenCLDevice
from katapool.engine.process import tools_stop_on_sigterm
from katapool.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("prepare", help="run OpenCL tuning / TensorRT cache builds ahead of time")
    add_engine_args(p)
    add_device(p, "device(s) to prepare (default: every one the engine can use)")
    p.add_argument("--fast", action="store_true",
                   help="OpenCL: write the tuner's reference parameters so the engine starts at "
                        "once, untuned (a later `katapool prepare` runs the full tune)")
    p.add_argument("--force", action="store_true", help="redo work even if it is up to date")
    p.add_argument("--board-size", type=int, default=19, help="OpenCL: board size to tune for (default 19)")
    p.add_argument("--batch-size", type=_positive, default=None, help="OpenCL: batch size to tune for")
    add_preset(p, "server", "TensorRT: preset of the production config")
    m = p.add_argument_group("measuring (--measure)")
    m.add_argument("--measure", action="store_true",
                   help="measure useFP16 (katago testgpuerror), nnMaxBatchSize (benchmarknn) "
                        "and numSearchThreads (benchmark) on each device with this network, "
                        "and store them as a profile that generated configs then use")
    m.add_argument("--mode", choices=["analysis", "gtp", "both"], default="both",
                   help="measure for analysis (throughput), gtp (latency) or both (default)")
    m.add_argument("--measure-visits", type=_positive, default=100, metavar="N",
                   help="visits per benchmark search (default 100)")
    m.add_argument("--measure-positions", type=_positive, default=3, metavar="N",
                   help="benchmark positions (default 3)")
    m.add_argument("--measure-iterations", type=_positive, default=20, metavar="N",
                   help="timed network batches per batch size (default 20)")
    m.add_argument("--measure-batches", type=_positive_list, default=None, metavar="N,N,...",
                   help="batch sizes to time (default: powers of two around the rule's size)")
    m.add_argument("--measure-threads", type=_positive_list, default=None, metavar="N,N,...",
                   help="search thread counts to time (default: around the batch size)")
    p.set_defaults(func=cmd_prepare)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _positive_list(text: str) -> list[int]:
    values = [_positive(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected a comma list of whole numbers")
    return sorted(set(values))


_MEASURE_ONLY = {"measure_batches": "--measure-batches", "measure_threads": "--measure-threads"}


def cmd_prepare(args: argparse.Namespace) -> int:
    with tools_stop_on_sigterm():
        return _prepare(args)


def _prepare(args: argparse.Namespace) -> int:
    if not 7 <= args.board_size <= 19:
        raise ConfigError(f"--board-size must be 7..19 (got {args.board_size})")
    given = [flag for key, flag in _MEASURE_ONLY.items() if getattr(args, key) is not None]
    if given and not args.measure:
        raise ConfigError(f"{', '.join(given)} only apply with --measure")
    engine = engine_from_args(args)
    model = model_from_args(args, engine)
    info = engine.info
    results: list[PrepareResult] = []
    report = None
    if info.backend is Backend.OPENCL:
        report = discover_devices(info.path, model, opencl=True)
        if not report.opencl:
            raise ConfigError("no OpenCL device: " + "; ".join(report.notes))
        chosen = report.opencl
        if args.device:
            chosen = []
            for dev in parse_device_spec(device_spec(args), report):
                match: Device | None
                if dev.kind is DeviceKind.OPENCL:
                    match = dev
                elif dev.kind is DeviceKind.CPU:
                    match = next((o for o in report.opencl if o.is_cpu_like), None)
                else:  # an NVIDIA GPU, found in OpenCL's numbering by name
                    match = next((o for o in report.opencl if dev.name.lower() in o.name.lower()
                                  and o not in chosen), None)
                if match is None:
                    raise ConfigError(f"device {dev.spec} ({dev.name}) is not visible to OpenCL")
                chosen.append(match)
        devices = [OpenCLDevice(d.index, d.name, None) for d in chosen]
        results = prepare_opencl(info.path, info, model, devices, err, fast=args.fast,
                                 force=args.force, board_size=args.board_size,
                                 batch_size=args.batch_size)
    elif info.backend is Backend.TENSORRT:
        report = discover_devices(info.path, model, opencl=False)
        if not report.nvidia:
            raise ConfigError("TensorRT needs an NVIDIA GPU and none was found: "
                              + "; ".join(report.notes))
        picked = parse_device_spec(device_spec(args) if args.device else
                                   ",".join(d.spec for d in report.nvidia), report)
        with tempfile.TemporaryDirectory(prefix="katapool-trt-") as tmp:
            configs = []
            for dev in picked:
                built = build_config(mode=Mode.ANALYSIS, info=info, model=model,
                                     device_spec=dev.spec, preset=args.preset, report=report)
                cfg = Path(tmp) / f"{dev.index}.cfg"
                cfg.write_text(built.text)
                configs.append((f"{dev.spec} ({dev.name})", cfg))
            results = prepare_tensorrt(info.path, info, model, configs, err, force=args.force)
    elif not args.measure:
        out.print(f"nothing to prepare for the {info.backend.label} backend")
        return 0
    if results:
        table = Table("device", "result", "file", "seconds")
        for r in results:
            table.add_row(r.device, r.action, str(r.file or ""), f"{r.seconds:.1f}")
        out.print(table)
    if args.measure:
        _measure(args, info, model, report)
    return 0


def _devices_to_measure(args: argparse.Namespace, info: EngineInfo,
                        report: DeviceReport) -> list[Device]:
    if args.device:
        devices = parse_device_spec(device_spec(args), report)
    elif info.backend is Backend.OPENCL:
        devices = list(report.opencl)
    elif info.backend in (Backend.CUDA, Backend.TENSORRT):
        devices = list(report.nvidia)
    else:
        devices = parse_device_spec("cpu" if info.backend is Backend.EIGEN else "auto", report)
    if not devices:
        raise ConfigError(f"no device for the {info.backend.label} engine to measure: "
                          + "; ".join(report.notes))
    return devices


def measure_before_start(args: argparse.Namespace, mode: Mode) -> None:
    """``katapool analysis --measure``: the profiles of this engine, network and devices for
    ``mode``, measured now unless current ones exist (then nothing runs), so that the configs
    about to be generated use them. Everything it prints goes to stderr."""
    from katapool.cli.common import resolve_katago_args
    from katapool.config.measure_profile import MeasureOptions, measure_devices

    found = resolve_katago_args(args)
    report = discover_devices(found.info.path, found.model,
                              opencl=found.info.backend is Backend.OPENCL)
    devices = _devices_to_measure(args, found.info, report)
    with tools_stop_on_sigterm():
        measured = measure_devices(found.info, found.model, devices, report,
                                   MeasureOptions(modes=[mode]), err)
    for r in measured:
        values = r.profile.values()
        err.print(f"katapool: {r.device} {r.mode.value}: {r.action} (useFP16 "
                  f"{str(values.get('useFP16', '')).lower()}, nnMaxBatchSize "
                  f"{values.get('nnMaxBatchSize', '')}, numSearchThreads "
                  f"{values.get('numSearchThreads', '')}; {r.file})")


def _measure(args: argparse.Namespace, info: EngineInfo, model: Path,
             report: DeviceReport | None) -> None:
    from katapool.config.measure_profile import MeasureOptions, measure_devices

    if report is None:
        report = discover_devices(info.path, model, opencl=info.backend is Backend.OPENCL)
    devices = _devices_to_measure(args, info, report)
    modes = [Mode.ANALYSIS, Mode.GTP] if args.mode == "both" else [Mode(args.mode)]
    opts = MeasureOptions(modes=modes, board_size=args.board_size, visits=args.measure_visits,
                          positions=args.measure_positions, iterations=args.measure_iterations,
                          batches=args.measure_batches, threads=args.measure_threads,
                          force=args.force)
    measured = measure_devices(info, model, devices, report, opts, err)
    table = Table("device", "mode", "result", "useFP16", "nnMaxBatchSize", "numSearchThreads",
                  "profile")
    for r in measured:
        values = r.profile.values()
        table.add_row(r.device, r.mode.value, r.action, str(values.get("useFP16", "")).lower(),
                      str(values.get("nnMaxBatchSize", "")),
                      str(values.get("numSearchThreads", "")), str(r.file))
    out.print(table)
