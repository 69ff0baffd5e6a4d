"""``katapool model export-tflite`` and ``export-coreml``: files for phones and Macs, written
from katapool's own model description and checked before anything is written."""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from katapool.cli.common import check_named_engine, err, out
from katapool.cli.shared_options import add_katago
from katapool.errors import ConfigError

CHECK_POSITIONS = 50


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="the network (.bin.gz, .bin, .txt.gz, .txt)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--board", type=int, default=19, help="board size the file takes (default 19)")
    p.add_argument("--postprocess", action="store_true", help="also policy/value "
                   "probabilities, score in points and ownership in [-1, 1] (as export-onnx)")


def _check_options(p: argparse.ArgumentParser, no_check: str) -> None:
    """The comparison with the engine every export makes, and the output form."""
    p.add_argument("--sgf", type=Path, nargs="+", metavar="GAME", default=[],
                   help="games to take check positions from (default: quick self-play games "
                        "of the network itself)")
    p.add_argument("--positions", type=int, default=CHECK_POSITIONS,
                   help=f"check positions against the engine (default {CHECK_POSITIONS})")
    p.add_argument("--no-check", action="store_true", help=no_check)
    p.add_argument("--json", action="store_true")
    add_katago(p)


def register_mobile(msub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = msub.add_parser(
        "export-tflite", help="the network as a TensorFlow Lite (LiteRT) file, checked against "
        "the engine", description="Write the network as a .tflite file (KataGo's input/output "
        "names, NCHW, dynamic batch), run it in the LiteRT interpreter and compare it with the "
        "engine's own outputs on real positions: FP32 must stay within KataGo's FP32 limits, "
        "FP16 within its FP16 limits; INT8 is reported against the FP16 limits. A failed "
        "check writes nothing. Needs the katapool[tflite] extra.")
    _common(t)
    kind = t.add_mutually_exclusive_group()
    kind.add_argument("--fp16", action="store_true", help="FP16 weights (half the size)")
    kind.add_argument("--int8", action="store_true",
                      help="INT8 convolutions and matrices (needs --calibration)")
    t.add_argument("--calibration", type=Path, nargs="+", metavar="GAME", default=[],
                   help="games to take INT8 calibration positions from")
    t.add_argument("--calibration-positions", type=int, default=64, metavar="N")
    _check_options(t, "write without comparing with the engine (the file is still loaded and "
                      "run once in LiteRT)")
    t.set_defaults(func=cmd_export_tflite)


    c = msub.add_parser(
        "export-coreml", help="the network as a Core ML package (.mlpackage) for iOS/macOS apps",
        description="Write the network as a Core ML ML Program package (KataGo's input/output "
        "names, NCHW, batch 1 to 256 unless --batch fixes it), then check what Linux can check: "
        "the package reloads, its inputs, outputs, types and op counts, that an FP16 program "
        "computes in FP16, and its numbers: the saved program is read back, replayed op by op "
        "with ONNX Runtime (FP16 rounding after every op) and compared with the ONNX export and "
        "with the engine on real positions (KataGo's FP32 or FP16 limits). Core ML itself "
        "cannot run off macOS: speed, Neural Engine placement and Apple's own arithmetic are "
        "not verified. A failed check writes nothing. Needs the katapool[coreml] extra.")
    _common(c)
    c.add_argument("--fp16", action="store_true",
                   help="FP16 weights and arithmetic (FP32 inputs/outputs), as KataGo's own "
                        "Core ML path computes on the Neural Engine")
    c.add_argument("--batch", type=int, metavar="N",
                   help="a fixed batch size (the Neural Engine runs only fixed shapes; default: "
                        "flexible 1 to 256)")
    c.add_argument("--target", default="iOS15", metavar="TARGET",
                   help="minimum deployment target: iOS15 (default), iOS16, iOS17, iOS18, "
                        "macOS12, macOS13, ...")
    _check_options(c, "skip the comparison with the engine (the structural checks and the "
                      "replay against the ONNX export still run)")
    c.set_defaults(func=cmd_export_coreml)


def _validate_args(args: argparse.Namespace, suffix: str | None = None) -> None:
    """``suffix``: the file name's ending (TFLite); a Core ML package checks its own."""
    from katapool.models.export_check import output_file, writable_output

    if not 2 <= args.board <= 19:
        raise ConfigError(f"--board {args.board}: KataGo networks take 2 to 19")
    check_named_engine(args)
    if args.positions < 1:
        raise ConfigError(f"--positions must be at least 1 (got {args.positions})")
    if args.no_check and args.sgf:
        raise ConfigError("--sgf gives the check's positions: with --no-check there is no check")
    for game in [*args.sgf, *getattr(args, "calibration", [])]:
        if not game.is_file():
            raise ConfigError(f"{game}: no such game file")
    if suffix:
        output_file(args.output, suffix, "a TFLite model")
    else:
        writable_output(args.output)


def cmd_export_tflite(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from katapool.models import load_model
    from katapool.models.export_check import (
        check_positions,
        engine_samples,
        engine_setup,
        write_atomically,
    )
    from katapool.models.export_onnx import export_onnx
    from katapool.models.litert import LiteRTSession
    from katapool.models.oplist import from_onnx
    from katapool.models.validate import FP16_LIMITS, FP32_LIMITS, compare, session_evals

    _validate_args(args, ".tflite")
    if args.int8 and not args.calibration:
        raise ConfigError("--int8 needs --calibration GAME... (positions to calibrate on)")
    if args.calibration and not args.int8:
        raise ConfigError("--calibration is for --int8")
    if args.calibration_positions < 1:
        raise ConfigError("--calibration-positions must be at least 1")
    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    from katapool.models.litert import _interpreter_class

    _interpreter_class()  # the extra is missing: say so before any work
    model = load_model(args.model)
    proto = export_onnx(model, board=args.board, postprocess=args.postprocess)
    ops = from_onnx(proto)
    report = None
    samples: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="katapool-tflite-") as tmp, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                     console=err, transient=True) as progress:
        work = Path(tmp)
        if args.int8 or not args.no_check:
            with engine_setup(args.katago, args.model) as setup:
                calibration_keys: set[tuple[str, int]] = set()
                feeds: list[dict[str, Any]] = []
                if args.int8:
                    from katapool.models.precision_check import calibration_feeds

                    cal = check_positions(setup, model, args.calibration,
                                          args.calibration_positions, args.board, work, seed=13)
                    calibration_keys = {(str(p.sgf), p.moves) for p in cal}
                    task = progress.add_task("calibration inputs", total=len(cal))
                    feeds = calibration_feeds(model, proto.SerializeToString(), setup.katago,
                                              setup.config, cal, None, work,
                                              lambda: progress.advance(task))
                data = _write(ops, proto, precision, feeds)
                if not args.no_check:
                    if not args.sgf:
                        progress.add_task("self-play games for check positions", total=None)
                    same_games = args.int8 and (not args.sgf or
                                                {p.resolve() for p in args.sgf} ==
                                                {p.resolve() for p in args.calibration})
                    positions = check_positions(
                        setup, model, args.sgf or ([] if not args.int8 else args.calibration),
                        args.positions, args.board, work,
                        exclude=calibration_keys if same_games else None)
                    task = progress.add_task(f"engine on {len(positions)} positions",
                                             total=len(positions))
                    samples = engine_samples(setup, model, positions,
                                             lambda: progress.advance(task))
        else:
            data = _write(ops, proto, precision, [])
        session = LiteRTSession(data)
        _smoke(session)
        if samples:
            limits = FP32_LIMITS if precision == "fp32" else FP16_LIMITS
            report = compare(session_evals(model, session, samples), [s.engine for s in samples],
                             limits)
    passed = report is None or report.passed or precision == "int8"
    if passed:
        write_atomically(args.output, data)
    _print_report(args, model.name, precision, len(data), report, passed)
    return 0 if passed else 1


def _write(ops: Any, proto: Any, precision: str, feeds: list[dict[str, Any]]) -> bytes:
    from katapool.models.export_tflite import write_tflite

    if precision == "int8":
        from katapool.models.tflite_int8 import int8_tflite

        return int8_tflite(ops, proto, feeds)
    return write_tflite(ops, precision)


def _smoke(session: Any) -> None:
    """One batch through the interpreter: the file loads, runs and gives finite numbers."""
    import numpy as np

    from katapool.errors import ModelError
    from katapool.models.speed import synthetic_feeds

    outputs = session.run(None, synthetic_feeds(session, 2))
    for info, value in zip(session.get_outputs(), outputs, strict=True):
        if not np.all(np.isfinite(value)):
            raise ModelError(f"the TFLite file gives non-finite {info.name}: nothing written")


def _print_report(args: argparse.Namespace, name: str, precision: str, size: int,
                  report: Any, passed: bool) -> None:
    if args.json:
        out.out(json.dumps({"network": name, "output": str(args.output), "precision": precision,
                            "written": passed, "size_bytes": size,
                            "check": None if report is None else report.as_dict()}))
        return
    if report is not None:
        limit_name = "FP32" if precision == "fp32" else "FP16"
        from katapool.cli.model_cmd import error_table

        err.print(error_table(report, f"{name}: TFLite {precision.upper()} (LiteRT) vs the engine "
                                      f"on {report.positions} positions",
                              f"KataGo's {limit_name} limits (testgpuerror) apply to p99"))
    if not passed:
        err.print(f"[red]the TFLite file is outside KataGo's limits: nothing written[/] "
                  f"({args.output})")
        return
    if report is None:
        err.print("[yellow]not compared with the engine (--no-check): loaded and run once in "
                  "LiteRT[/]")
    elif precision == "int8" and not report.passed:
        err.print("[yellow]INT8 is outside KataGo's FP16 limits (reported, not a pass line)[/]")
    err.print(f"wrote {args.output} ({size:,} bytes, {precision})")


def cmd_export_coreml(args: argparse.Namespace) -> int:
    from katapool.models import load_model
    from katapool.models.export_check import check_positions, engine_samples, engine_setup
    from katapool.models.export_coreml import MAX_BATCH, export_coreml, import_coremltools
    from katapool.models.validate import FP16_LIMITS, FP32_LIMITS

    _validate_args(args)
    if args.output.suffix != ".mlpackage":
        raise ConfigError(f"{args.output}: a Core ML package is a directory named *.mlpackage")
    if args.output.exists() and not args.output.is_dir():
        raise ConfigError(f"{args.output} is a file, not a Core ML package (a directory): "
                          "choose another name")
    if args.batch is not None and not 1 <= args.batch <= MAX_BATCH:
        raise ConfigError(f"--batch {args.batch}: must be 1 to {MAX_BATCH}")
    import_coremltools()  # the extra is missing: say so before any work
    precision = "fp16" if args.fp16 else "fp32"
    model = load_model(args.model)
    limits = FP32_LIMITS if precision == "fp32" else FP16_LIMITS
    engine_report: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="katapool-coreml-") as tmp, \
            contextlib.ExitStack() as stack:
        checks = []
        if not args.no_check:
            setup = stack.enter_context(engine_setup(args.katago, args.model))
            with _progress(args) as progress:
                if not args.sgf:
                    progress.add_task("self-play games for check positions", total=None)
                positions = check_positions(setup, model, args.sgf, args.positions, args.board,
                                            Path(tmp))
                task = progress.add_task(f"engine on {len(positions)} positions",
                                         total=len(positions))
                samples = engine_samples(setup, model, positions, lambda: progress.advance(task))

            def against_engine(package: Path) -> tuple[str, bool, str]:
                from katapool.models.coreml_replay import _session, load_program, replay_onnx
                from katapool.models.validate import compare, session_evals

                session = _session(replay_onnx(load_program(package)))
                report = compare(session_evals(model, session, samples),
                                 [s.engine for s in samples], limits)
                engine_report.append(report)
                worst = ", ".join(f"{k} {report.errors[k]['p99']:.2g}/{v:g}"
                                  for k, v in report.limits.items())
                return ("engine", report.passed,
                        f"replay vs KataGo on {report.positions} positions, p99/limit: {worst}")

            checks.append(against_engine)
        with _progress(args) as progress:
            progress.add_task(f"writing and checking the {precision.upper()} package", total=None)
            result = export_coreml(args.model, args.output, precision, args.board, args.batch,
                                   args.postprocess, extra_checks=checks, deployment=args.target)
    report = engine_report[0] if engine_report else None
    if args.json:
        out.out(json.dumps({"network": model.name, "output": str(args.output),
                            "written": result.path is not None, **result.as_dict(),
                            "engine_check": None if report is None else report.as_dict()}))
    else:
        table = Table(title=f"{model.name}: Core ML {precision.upper()} package checks")
        for col in ("check", "", "detail"):
            table.add_column(col)
        for name, ok, detail in result.checks:
            table.add_row(name, "[green]ok[/]" if ok else "[red]failed[/]", escape(detail))
        err.print(table)
        err.print("[dim]not verified here: " + "; ".join(result.not_verified) + "[/]")
        if result.path is None:
            err.print(f"[red]a check failed: nothing written[/] ({args.output})")
        else:
            err.print(f"wrote {args.output} ({result.size_bytes:,} bytes, {precision})")
    return 0 if result.path is not None else 1


def _progress(args: argparse.Namespace) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    console=err, transient=True)
