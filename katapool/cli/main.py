"""Entry point: ``katapool COMMAND ...``."""

from __future__ import annotations

import argparse
import os
import sys

from rich.text import Text

from katapool import __version__
from katapool.cli import (
    analysis_cmd,
    analyze_cmd,
    bench_cmd,
    config_cmd,
    daemon_cmd,
    devices_cmd,
    doctor_cmd,
    engine_cmd,
    gtp_cmd,
    model_cmd,
    prepare_cmd,
    ray_cmd,
)
from katapool.cli.common import err
from katapool.errors import KatapoolError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="katapool",
        description="Supervise, route and prepare pools of native KataGo engines.",
    )
    parser.add_argument("--version", action="version", version=f"katapool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine_cmd.register(sub)
    devices_cmd.register(sub)
    config_cmd.register(sub)
    prepare_cmd.register(sub)
    analyze_cmd.register(sub)
    analysis_cmd.register(sub)
    daemon_cmd.register(sub)
    gtp_cmd.register(sub)
    model_cmd.register(sub)
    bench_cmd.register(sub)
    ray_cmd.register(sub)
    doctor_cmd.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        # Inside the try: options checked as they are read (devices) fail as one line too.
        args = parser.parse_args(argv)
        return int(args.func(args))
    except KatapoolError as exc:
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`katapool review --json | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        err.print(Text.assemble(("error: ", "bold red"), f"{exc.strerror or exc}{where}"),
                  soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
