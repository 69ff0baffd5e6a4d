"""``katapool model quantize``: FP16 and INT8 versions of an export, checked against the engine."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from katapool.cli.common import check_named_engine, err, out
from katapool.cli.shared_options import add_katago
from katapool.errors import ConfigError, ModelError

NETWORK_SUFFIXES = (".bin.gz", ".bin", ".txt.gz", ".txt")
MAX_BENCH_BATCH = 1024


def register_quantize(msub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = msub.add_parser(
        "quantize", help="FP16 or INT8 version of an ONNX export, validated against the engine",
        description="Write an FP16 or INT8 (Q/DQ, ONNX Runtime static quantization) version of "
        "a katapool ONNX export, then compare it and the FP32 export with the engine on the same "
        "positions (KataGo's FP16 limits are the pass line for FP16 and reported for INT8), with "
        "file sizes and ONNX Runtime CPU evaluations/s.")
    q.add_argument("model", type=Path, help="a katapool ONNX export, or the network itself "
                   "(.bin.gz: exported first)")
    kind = q.add_mutually_exclusive_group(required=True)
    kind.add_argument("--fp16", action="store_true", help="FP16, FP32 kept where it matters")
    kind.add_argument("--int8", action="store_true", help="INT8 weights and activations (Q/DQ)")
    q.add_argument("-o", "--output", type=Path, required=True)
    q.add_argument("--network", type=Path, metavar="NET",
                   help="the .bin.gz the ONNX file was exported from (the engine evaluates it)")
    q.add_argument("--calibration", type=Path, nargs="+", metavar="GAME", default=[],
                   help="games to take INT8 calibration positions from (also validation "
                        "positions unless --sgf is given)")
    q.add_argument("--calibration-positions", type=int, default=64, metavar="N")
    q.add_argument("--calibration-method", choices=["percentile", "minmax", "entropy", "mse"],
                   default="percentile", help="how activation ranges are chosen (default "
                   "percentile; mse: the clip of least squared error per tensor)")
    q.add_argument("--activations", choices=["int8", "uint8"], default="int8",
                   help="INT8 activations: int8 symmetric (default; what TensorRT takes) or "
                        "uint8 asymmetric (faster with ONNX Runtime on x86 CPUs)")
    q.add_argument("--mixed", action="store_true",
                   help="with --int8: measure each node's sensitivity and make only the least "
                        "sensitive INT8, as many as stay within --error-budget (the rest FP32)")
    q.add_argument("--error-budget", type=float, default=0.5, metavar="F",
                   help="with --mixed: allowed p99 error on the calibration positions as a "
                        "fraction of KataGo's FP16 limits (default 0.5: held-out positions "
                        "were measured at up to 2.2x the calibration positions' error)")
    q.add_argument("--percentile", type=float, default=99.999,
                   help="with --calibration-method percentile (default 99.999)")
    q.add_argument("--sgf", type=Path, nargs="+", metavar="GAME", default=[],
                   help="games to take validation positions from")
    q.add_argument("--positions", type=int, default=200,
                   help="validation positions (default 200; 0 skips validation)")
    q.add_argument("--input-model", type=Path, metavar="NET",
                   help="a smaller network with the same input features to dump input tensors")
    q.add_argument("--board", type=int, default=19, help="board size when exporting (default 19)")
    q.add_argument("--bench-batch", type=int, default=8,
                   help=f"batch for the speed figure (default 8, at most {MAX_BENCH_BATCH})")
    q.add_argument("--bench-seconds", type=float, default=3.0,
                   help="seconds per speed figure (0 skips it)")
    q.add_argument("--json", action="store_true")
    add_katago(q)
    q.set_defaults(func=cmd_quantize)


def _load(args: argparse.Namespace) -> tuple[Any, Path | None]:
    """The FP32 export and the network it came from (when known)."""
    import onnx

    from katapool.models import load_model
    from katapool.models.export_onnx import export_onnx

    if args.model.name.endswith(NETWORK_SUFFIXES):
        return export_onnx(load_model(args.model), board=args.board), args.model
    try:
        proto = onnx.load(str(args.model))
    except Exception as exc:  # onnx raises DecodeError, OSError and friends
        raise ModelError(f"{args.model}: not a readable ONNX file ({exc})") from None
    return proto, args.network


def cmd_quantize(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from katapool.config.build import build_config
    from katapool.config.settings import Mode
    from katapool.engine.discovery import resolve_engine
    from katapool.engine.probe import probe_version
    from katapool.models import load_model, quantize
    from katapool.models.precision_check import (
        calibration_feeds,
        check_variant,
        feeds_from_samples,
        pick_positions,
    )
    from katapool.models.validate import engine_reference

    if args.positions < 0:
        raise ConfigError(f"--positions must be 0 or more (got {args.positions})")
    if args.calibration_positions < 1:
        raise ConfigError(f"--calibration-positions must be at least 1 "
                          f"(got {args.calibration_positions})")
    if not 1 <= args.bench_batch <= MAX_BENCH_BATCH:
        # Its synthetic inputs are allocated whole: a mistyped 100000 is gigabytes.
        raise ConfigError(f"--bench-batch must be 1 to {MAX_BENCH_BATCH} (got {args.bench_batch})")
    if not args.bench_seconds >= 0:
        raise ConfigError(f"--bench-seconds must be 0 or more (got {args.bench_seconds})")
    is_network = args.model.name.endswith(NETWORK_SUFFIXES)
    if is_network and args.network:
        raise ConfigError("--network is for ONNX input: this input is the network itself")
    if not is_network and args.board != 19:
        raise ConfigError("--board is for network input: an ONNX export has its board size")
    if not 0 < args.percentile <= 100:
        raise ConfigError(f"--percentile {args.percentile}: must be in (0, 100]")
    from katapool.models.export_check import output_file, write_atomically

    output_file(args.output, ".onnx", "an ONNX model", inputs=(args.model, args.network))
    check_named_engine(args)
    proto, network = _load(args)
    quantize.check_katapool_export(proto)
    validation_games = args.sgf or args.calibration
    if args.int8 and not args.calibration:
        raise ConfigError("--int8 needs --calibration GAME... (positions to calibrate on)")
    if args.mixed and not args.int8:
        raise ConfigError("--mixed chooses INT8 nodes: use it with --int8")
    if args.mixed and not 0 < args.error_budget <= 10:
        raise ConfigError(f"--error-budget {args.error_budget}: must be above 0 and at most 10 "
                          "(1.0 = KataGo's FP16 limits)")
    if args.positions and not validation_games:
        raise ConfigError("validation needs games: --sgf GAME... (or --positions 0 to skip it)")
    needs_engine = args.int8 or args.positions > 0
    if needs_engine and network is None:
        raise ConfigError("the engine needs the network this ONNX file came from: --network NET")
    model = load_model(network) if network else None
    meta = {p.key: p.value for p in proto.metadata_props}
    if model is not None and meta.get("name") not in (None, model.name):
        raise ConfigError(f"{args.model} is an export of {meta['name']}, not of {model.name}")
    if args.input_model and model is not None and needs_engine:
        from katapool.models.validate import check_input_model

        check_input_model(args.input_model, model)
    fp32 = proto.SerializeToString()
    calibration_count = args.calibration_positions if args.int8 else 0

    with tempfile.TemporaryDirectory(prefix="katapool-quantize-") as tmp, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                     console=err, transient=True) as progress:
        samples, feeds, selection = None, [], []
        if needs_engine:
            assert model is not None and network is not None
            info = probe_version(resolve_engine(args.katago).path)
            cfg = Path(tmp) / "gtp.cfg"
            cfg.write_text(build_config(mode=Mode.GTP, info=info, model=network,
                                        preset="desktop").text)
            validation, calibration = pick_positions(
                validation_games, args.calibration or validation_games, args.positions,
                calibration_count, Path(tmp), board=int(meta.get("pos_len_x", 19)))
            if calibration and args.mixed:  # the engine's answers too: they rank the nodes
                task = progress.add_task(f"engine on {len(calibration)} calibration positions",
                                         total=len(calibration))
                selection = engine_reference(model, info.path, cfg, calibration,
                                             lambda: progress.advance(task), args.input_model)
                feeds = feeds_from_samples(model, fp32, selection)
            elif calibration:
                task = progress.add_task("calibration inputs", total=len(calibration))
                feeds = calibration_feeds(model, fp32, info.path, cfg, calibration,
                                          args.input_model, Path(tmp),
                                          lambda: progress.advance(task))
            if validation:
                task = progress.add_task(f"engine on {len(validation)} positions",
                                         total=len(validation))
                samples = engine_reference(model, info.path, cfg, validation,
                                           lambda: progress.advance(task), args.input_model)
        mixed = None
        if args.fp16:
            converted = quantize.to_fp16(proto)
        elif args.mixed:
            mixed = _search(args, model, proto, feeds, selection, progress)
            converted = mixed.proto
        else:
            converted = quantize.to_int8(proto, feeds, quantize.Int8Options(
                args.calibration_method, args.percentile, activations=args.activations))
        write_atomically(args.output, converted.SerializeToString())
        progress.add_task("checking FP32 and the new model", total=None)
        variants = [check_variant(model, "fp32", fp32, samples, args.bench_batch, args.bench_seconds),
                    check_variant(model, quantize.precision_of(converted),
                                  converted.SerializeToString(), samples, args.bench_batch,
                                  args.bench_seconds)]
    return _report(args, variants, meta.get("name") or (model.name if model else "?"), mixed)


def _search(args: argparse.Namespace, model: Any, proto: Any, feeds: list[Any],
            selection: list[Any], progress: Any) -> Any:
    from katapool.models import quantize
    from katapool.models.int8_mixed import MixedSearch, search
    from katapool.models.speed import ort_speed

    tasks: dict[str, Any] = {}

    def advance(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(
                "node sensitivity" if stage == "sensitivity" else "combining nodes",
                total=total or None)
        progress.update(tasks[stage], completed=done)

    curve_seconds = min(args.bench_seconds, 1.5)
    return search(MixedSearch(
        model, proto, feeds, selection,
        quantize.Int8Options(args.calibration_method, args.percentile,
                             activations=args.activations),
        budget=args.error_budget, progress=advance,
        speed=(lambda b: ort_speed(b, args.bench_batch, curve_seconds).evals_per_second)
        if curve_seconds > 0 else None))


def _curve_table(mixed: Any) -> Table:
    table = Table(title=f"mixed precision: INT8 nodes against error (calibration positions) "
                        f"and speed; budget {mixed.budget:g}x KataGo's FP16 limits",
                  caption=mixed.stopped)
    for col in ("INT8 nodes", "x limits", "winrate", "lead", "top pol.", "KL", "evals/s", ""):
        table.add_column(col, justify="right")
    for t in mixed.curve:
        speed = "-" if t.evals_per_second is None else f"{t.evals_per_second:.0f}"
        mark = "[green]chosen[/]" if t.int8_nodes == len(mixed.chosen) else ""
        table.add_row(f"{t.int8_nodes} / {mixed.candidates}", f"{t.ratio:.2f}",
                      *(f"{t.errors[k]:.2g}" for k in ("winrate", "lead", "top_policy",
                                                        "policy_kl")), speed, mark)
    return table


def _report(args: argparse.Namespace, variants: list[Any], name: str, mixed: Any = None) -> int:
    new = variants[-1]
    # FP16 and mixed INT8 promise KataGo's FP16 limits; plain INT8 only reports against them.
    fp16_failed = (args.fp16 or mixed is not None) and new.report is not None \
        and not new.report.passed
    if args.json:
        doc = {"network": name, "output": str(args.output),
               "limits": "KataGo FP16 (testgpuerror), p99",
               "variants": [v.as_dict() for v in variants]}
        if mixed is not None:
            doc["mixed"] = mixed.as_dict()
        out.out(json.dumps(doc))
        return 1 if fp16_failed else 0
    if mixed is not None:
        out.print(_curve_table(mixed))
    table = Table(title=f"{name}: FP32 export and {new.precision}",
                  caption=f"evals/s: ONNX Runtime CPU, batch {args.bench_batch}; errors: p99 "
                          "against the engine; KataGo's FP16 limits are 0.02 winrate, 1.0 point, "
                          "0.025 top policy, 0.002 KL")
    for col in ("", "MB", "evals/s", "winrate", "lead", "top pol.", "KL", "owner.", "FP16 lim."):
        table.add_column(col, justify="left" if not col else "right")
    for v in variants:
        r = v.report
        errors = ["-"] * 5 if r is None else [
            f"{r.errors[k]['p99']:.2g}" for k in ("winrate", "lead", "top_policy", "policy_kl",
                                                  "ownership")]
        verdict = "-" if r is None else ("[green]within[/]" if r.passed else "[red]over[/]")
        speed = "-" if v.speed is None else f"{v.speed.evals_per_second:.0f}"
        table.add_row(v.precision.split(" ")[0], f"{v.size_bytes / 1e6:.1f}", speed, *errors,
                      verdict)
    out.print(table)
    if new.report is None:
        err.print("[yellow]not validated against the engine (--positions 0)[/]")
    err.print(f"wrote {args.output}")
    return 1 if fp16_failed else 0
