"""``katapool model``: look inside networks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from katapool.cli.common import out
from katapool.models import load_model, summarize


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("model", help="inspect KataGo networks")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    i = msub.add_parser("inspect", help="name, version, inputs, trunk, heads, parameters, sha256")
    i.add_argument("model", type=Path, help=".bin.gz, .bin, .txt.gz or .txt")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)


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
