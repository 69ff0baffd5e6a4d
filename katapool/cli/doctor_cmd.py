"""``katapool doctor``: one line per check of this machine, each ok or a problem with its fix."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from rich.markup import escape

from katapool.cli.common import out

_STYLE = {"ok": "green", "problem": "bold red", "info": "dim"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor", help="check the engine, devices, drivers, preparation, daemon and files",
        description="One line per check: ok, problem (with the command that fixes it) or info. "
                    "Local and quick: no network, no engine run beyond `katago version` and the "
                    "OpenCL device listing. Exit code 1 when any check found a problem.")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from katapool.doctor import run_checks

    checks = run_checks()
    problems = sum(1 for c in checks if c.status == "problem")
    if args.json:
        out.out(json.dumps({"checks": [asdict(c) for c in checks], "problems": problems}))
        return 1 if problems else 0
    width = max(len(c.name) for c in checks)
    for c in checks:
        fix = f" — fix: [bold]{escape(c.fix)}[/]" if c.fix else ""
        out.print(f"[{_STYLE[c.status]}]{c.status:<7}[/] {c.name:<{width}}  {escape(c.detail)}"
                  f"{fix}")
    out.print(f"{problems} problem(s)" if problems else "no problems")
    return 1 if problems else 0
