"""``katapool model``: look inside networks."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from katapool.cli.common import check_named_engine, err, out
from katapool.cli.model_mobile_cmd import register_mobile
from katapool.cli.model_trt_cmd import register_trt
from katapool.cli.quantize_cmd import register_quantize
from katapool.cli.shared_options import add_katago
from katapool.errors import ConfigError, KatapoolError, ModelError
from katapool.models import load_model, summarize


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("model", help="inspect networks, export them (ONNX, TFLite, Core ML), validate them")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    i = msub.add_parser("inspect", help="name, version, inputs, trunk, heads, parameters, sha256")
    i.add_argument("model", type=Path, help=".bin.gz, .bin, .txt.gz or .txt")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)
    register_conversion(msub)
    register_mobile(msub)
    register_quantize(msub)
    register_trt(msub)


def cmd_inspect(args: argparse.Namespace) -> int:
    info = summarize(load_model(args.model))
    if args.json:
        out.out(json.dumps(info))
        return 0
    trunk, heads, inputs = info["trunk"], info["heads"], info["inputs"]
    table = Table(show_header=False, title=info["name"], title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("model version", info["model_version"]),
        ("inputs", f"{inputs['spatial']} spatial, {inputs['global']} global"
         + (f", {inputs['meta']} metadata (human SL)" if inputs["meta"] else "")),
        ("trunk", f"{trunk['top_level_blocks']} blocks of {trunk['channels']} channels "
         f"({_kinds(trunk['top_level_kinds'])}); initial conv {trunk['initial_conv']}"),
        ("all blocks", _kinds(trunk["blocks_by_kind"])),
    ]
    for att in trunk["attention"]:
        rows.append(("attention", f"{att['heads']} query / {att['kv_heads']} key-value heads, "
                     f"q dim {att['q_head_dim']}, v dim {att['v_head_dim']}, RoPE {att['rope']}"))
    for ffn in trunk["ffn"]:
        rows.append(("feed-forward", f"{ffn['channels']} -> {ffn['ffn_channels']}"
                     + (" (SwiGLU)" if ffn["swiglu"] else "")))
    rows += [
        ("trunk tip", f"{trunk['tip']}, {trunk['tip_activation']}"),
        ("activations", ", ".join(f"{k} x{v}" for k, v in trunk["activations"].items())),
        ("heads", f"policy {heads['policy_channels']} ch (pass by {heads['policy_pass']}), value 3, "
         f"score {heads['score_channels']}, ownership"),
        ("parameters", f"{info['parameters']:,}"),
        ("file", f"{info['file']} ({info['size_bytes']:,} bytes)"),
        ("sha256", info["sha256"]),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    out.print(table)
    return 0


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items())


def register_conversion(msub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = msub.add_parser("export-onnx", help="the network as one ONNX graph (dynamic batch)")
    e.add_argument("model", type=Path)
    e.add_argument("-o", "--output", type=Path, required=True)
    e.add_argument("--board", type=int, default=19, help="board size the graph takes (default 19)")
    mode = e.add_mutually_exclusive_group()
    mode.add_argument("--raw", action="store_true", help="raw outputs only, as KataGo's own "
                      "emitter (the default)")
    mode.add_argument("--postprocess", action="store_true", help="also policy/value "
                      "probabilities, score in points and ownership in [-1, 1]")
    e.add_argument("--via-engine", action="store_true",
                   help="let the engine write it (KataGo builds with an ONNX emitter)")
    add_katago(e)
    e.set_defaults(func=cmd_export)

    v = msub.add_parser("validate", help="compare an ONNX export with the engine's own outputs")
    v.add_argument("model", type=Path, help="the network (.bin.gz)")
    v.add_argument("onnx", type=Path, help="its ONNX export")
    v.add_argument("--sgf", type=Path, nargs="+", required=True, metavar="GAME",
                   help="games to take positions from")
    v.add_argument("--positions", type=int, default=200)
    v.add_argument("--limits", choices=["fp32", "fp16"], default="fp32",
                   help="KataGo's testgpuerror limits to pass (default fp32)")
    v.add_argument("--symmetry", type=int, default=0, choices=range(8),
                   help="the board symmetry both evaluate under (default 0)")
    v.add_argument("--input-model", type=Path, metavar="NET",
                   help="a smaller network with the same input features for `evalsgf` to dump the "
                        "input tensors with (same tensors, less time)")
    v.add_argument("--json", action="store_true")
    add_katago(v)
    v.set_defaults(func=cmd_validate)


def cmd_export(args: argparse.Namespace) -> int:
    from katapool.models.export_check import output_file, write_atomically
    from katapool.models.export_onnx import export_onnx

    output_file(args.output, ".onnx", "an ONNX graph")
    check_named_engine(args)
    if args.via_engine:
        if args.postprocess or args.board != 19:
            raise ConfigError("--via-engine writes what the engine's emitter writes: "
                              "--board and --postprocess are katapool's exporter's options")
        return _export_via_engine(args)
    model = load_model(args.model)
    proto = export_onnx(model, board=args.board, postprocess=args.postprocess)
    write_atomically(args.output, proto.SerializeToString())
    err.print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes): {model.name}, "
              f"{args.board}x{args.board}, opset {proto.opset_import[0].version}")
    return 0


def _export_via_engine(args: argparse.Namespace) -> int:
    """The engine's own emitter (`katago dumponnx`, TensorRT/ONNX builds of KataGo)."""
    import subprocess

    from katapool.engine.discovery import resolve_engine

    katago = resolve_engine(args.katago).path
    args.output.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(katago), "dumponnx", "-model", str(args.model), "-output",
                           str(args.output)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not args.output.exists():
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise KatapoolError(f"the engine could not write ONNX: {said[-1] if said else 'no output'} "
                            "(export without --via-engine to use katapool's own exporter)")
    err.print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes) with {katago.name} dumponnx")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from katapool.config.build import build_config
    from katapool.config.settings import Mode
    from katapool.engine.discovery import resolve_engine
    from katapool.engine.probe import probe_version
    from katapool.models.validate import (
        FP16_LIMITS,
        FP32_LIMITS,
        check_input_model,
        sample_positions,
        validate,
        with_explicit_rules,
    )

    if args.positions < 1:
        raise ConfigError(f"--positions must be at least 1 (got {args.positions})")
    model = load_model(args.model)
    try:
        onnx_bytes = args.onnx.read_bytes()
    except OSError as exc:
        raise KatapoolError(f"cannot read {args.onnx}: {exc.strerror}") from None
    # Before the engine starts: a wrong file or game is one line, not minutes then a traceback.
    proto = _check_onnx(args.onnx, onnx_bytes)
    exported_from = {p.key: p.value for p in proto.metadata_props}.get("name")
    if exported_from not in (None, model.name):
        raise ConfigError(f"{args.onnx} is an export of {exported_from}, not of {model.name}: "
                          "give the network it was exported from")
    if args.input_model:
        check_input_model(args.input_model, model)
    with tempfile.TemporaryDirectory(prefix="katapool-validate-") as tmp:
        positions = sample_positions(with_explicit_rules(args.sgf, Path(tmp)), args.positions,
                                     board=onnx_board(proto))
        info = probe_version(resolve_engine(args.katago).path)
        built = build_config(mode=Mode.GTP, info=info, model=args.model, preset="desktop")
        cfg = Path(tmp) / "gtp.cfg"
        cfg.write_text(built.text)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=err, transient=args.json) as progress:
            task = progress.add_task(f"validating {model.name}", total=len(positions))
            report = validate(model, onnx_bytes, info.path, cfg, positions,
                              FP16_LIMITS if args.limits == "fp16" else FP32_LIMITS,
                              on_position=lambda: progress.advance(task),
                              input_model=args.input_model, symmetry=args.symmetry)
    if args.json:
        out.out(json.dumps({"model": model.name, "onnx": str(args.onnx), **report.as_dict()}))
    else:
        out.print(error_table(report, f"{model.name}: ONNX vs KataGo {info.version} on "
                                      f"{report.positions} positions",
                              "KataGo's testgpuerror limits apply to p99"))
        out.print("[green]passed[/]" if report.passed else "[red]failed[/]")
    note = limits_note(proto, args.limits)
    if note and not report.passed:
        err.print(f"[yellow]{args.onnx} {note}[/]")
    return 0 if report.passed else 1


def limits_note(proto: Any, limits: str) -> str | None:
    """Why a reduced-precision file failed the FP32 limits (the default), and what to ask for."""
    import onnx

    if limits != "fp32":
        return None
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in proto.graph.node):
        kind = "INT8"
    elif any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        kind = "FP16"
    else:
        return None
    return (f"computes in {kind}: KataGo's FP32 limits are not its pass line; "
            "--limits fp16 compares it with KataGo's FP16 limits")


def _check_onnx(path: Path, data: bytes) -> Any:
    import onnx

    try:
        return onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX file ({exc}); give the file "
                         "`katapool model export-onnx` wrote") from None


def onnx_board(proto: Any) -> int | None:
    """The board size an ONNX graph is fixed to (its spatial input's last dimension), or None
    when the graph leaves it open."""
    for item in proto.graph.input:
        if item.name in ("InputSpatial", "InputMask"):
            dims = item.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[3].dim_value > 0:
                return int(dims[3].dim_value)
    return None


def error_table(report: Any, title: str, caption: str) -> Table:
    """A validation report against the engine: max and p99 error per metric, with the limits."""
    table = Table(title=title, caption=caption)
    for col in ("", "max error", "p99 error", "limit (p99)", ""):
        table.add_column(col, justify="right" if col else "left")
    names = {"winrate": "winrate", "lead": "score lead (points)",
             "top_policy": "top-move policy", "policy_kl": "policy KL", "ownership": "ownership"}
    for key, label in names.items():
        e = report.errors[key]
        limit = report.limits.get(key)
        verdict = "" if limit is None else ("[green]ok[/]" if e["p99"] <= limit else "[red]over[/]")
        table.add_row(label, f"{e['max']:.6f}", f"{e['p99']:.6f}",
                      "" if limit is None else f"{limit:g}", verdict)
    return table
