"""``katapool model build-trt``: a TensorRT engine (.plan) from an ONNX export, GPU machines only."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from katapool.cli.common import err, out
from katapool.errors import ConfigError

PLAN_SUFFIXES = (".plan", ".engine", ".trt")  # KataGo's cache files; trtexec's habits


def register_trt(msub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = msub.add_parser("build-trt", help="a TensorRT engine from an ONNX export (NVIDIA GPU and "
                        "pip install 'katapool[tensorrt]')")
    b.add_argument("onnx", type=Path, help="an ONNX export (model export-onnx, or model quantize)")
    precision = b.add_mutually_exclusive_group()
    precision.add_argument("--fp32", dest="precision", action="store_const", const="fp32",
                           help="FP32 (TF32 allowed, as in KataGo's TensorRT backend)")
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="FP16: an FP16 model as it is, or an FP32 one with TensorRT 10's "
                                "FP16 flag (TensorRT 11: quantize --fp16 first)")
    precision.add_argument("--int8", dest="precision", action="store_const", const="int8",
                           help="INT8 from a Q/DQ model (model quantize --int8)")
    b.add_argument("-o", "--output", type=Path, required=True,
                   help="the engine file (.plan, .engine or .trt)")
    b.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="largest batch the engine takes: the nnMaxBatchSize KataGo will use "
                        "(profile: min 1, opt = max = N; default 16)")
    b.add_argument("--workspace-mib", type=int, metavar="MIB",
                   help="cap on TensorRT's builder workspace (default: TensorRT's own)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_build_trt, precision=None)


def cmd_build_trt(args: argparse.Namespace) -> int:
    from katapool.models.tensorrt_build import (
        TensorRTUnavailableError,
        build_engine,
        tensorrt_status,
    )

    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1 (got {args.max_batch})")
    if args.workspace_mib is not None and args.workspace_mib < 1:
        raise ConfigError(f"--workspace-mib must be at least 1 (got {args.workspace_mib})")
    from katapool.models.export_check import output_file

    # Before TensorRT is asked anything: a build takes minutes, and -o net.onnx would
    # overwrite the model it was built from.
    output_file(args.output, PLAN_SUFFIXES, "a TensorRT engine", inputs=(args.onnx,))
    reason = tensorrt_status()
    if reason is not None:
        raise TensorRTUnavailableError(f"cannot build a TensorRT engine here: {reason}")
    wanted = args.precision or "the file's precision"
    with err.status(escape(f"building a TensorRT engine from {args.onnx} ({wanted}, batch up to "
                           f"{args.max_batch}); big networks take minutes")):
        result = build_engine(args.onnx, args.output, args.precision, args.max_batch,
                              args.workspace_mib)
    if args.json:
        out.out(json.dumps({"onnx": str(args.onnx), "output": str(args.output),
                            **dataclasses.asdict(result)}))
        return 0
    table = Table(show_header=False, title=escape(f"TensorRT engine {args.output}"), title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("precision", result.precision.upper()
         + (" (strongly typed: the model's own types)" if result.strongly_typed else "")),
        ("max batch", str(result.max_batch)),
        ("inputs", ", ".join(f"{name} {shape}" for name, shape in result.inputs.items())),
        ("build time", f"{result.seconds:.1f} s"),
        ("size", f"{result.size_bytes / 1e6:.1f} MB"),
        ("TensorRT", result.tensorrt_version),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    out.print(table)
    return 0
