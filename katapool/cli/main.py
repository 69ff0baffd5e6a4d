"""Entry point: ``katapool COMMAND ...``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from katapool import __version__
from katapool.errors import KatapoolError

# Each command's module, in `katapool --help` order. A module is imported only to register
# (and run) its commands: a GUI that starts `katapool gtp` at every launch pays for the GTP
# bridge alone, not for every other command's libraries (rich, pydantic models, numpy, onnx).
COMMAND_MODULES = ["engine_cmd", "devices_cmd", "config_cmd", "prepare_cmd", "analyze_cmd",
                   "analysis_cmd", "daemon_cmd", "gtp_cmd", "model_cmd", "bench_cmd", "ray_cmd",
                   "doctor_cmd"]
# The commands each module registers, where the command line names one; any other command
# line (help, a typo, a command missing here) registers every module, as before.
MODULE_OF = {"engine": "engine_cmd", "devices": "devices_cmd", "config": "config_cmd",
             "prepare": "prepare_cmd", "analyze": "analyze_cmd", "review": "analyze_cmd",
             "analysis": "analysis_cmd", "start": "daemon_cmd", "status": "daemon_cmd",
             "stop": "daemon_cmd", "reload": "daemon_cmd", "logs": "daemon_cmd",
             "gtp": "gtp_cmd", "model": "model_cmd", "bench": "bench_cmd", "ray": "ray_cmd",
             "doctor": "doctor_cmd"}


def _modules_for(argv: list[str] | None) -> list[str]:
    """The named command's module alone, if the command line starts with a command;
    otherwise (``--help``, ``--version``, an unknown word) every module."""
    for arg in argv or []:
        return [MODULE_OF[arg]] if arg in MODULE_OF else COMMAND_MODULES
    return COMMAND_MODULES


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line, only with the command it names (every command
    when it names none it knows)."""
    parser = argparse.ArgumentParser(
        prog="katapool",
        description="Supervise, route and prepare pools of native KataGo engines.",
    )
    parser.add_argument("--version", action="version", version=f"katapool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _modules_for(argv):
        importlib.import_module(f"katapool.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    try:
        # Inside the try: options checked as they are read (devices) fail as one line too.
        args = parser.parse_args(argv)
        return int(args.func(args))
    except KatapoolError as exc:
        _error(str(exc))
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`katapool review --json | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        _error(_os_error_text(exc))
        return 1
    except KeyboardInterrupt:
        _error(None)
        return 130


def _os_error_text(exc: OSError) -> str:
    if isinstance(exc, FileExistsError) and exc.filename and os.path.isfile(exc.filename):
        # mkdir(exist_ok=True) on a path through a file: "File exists" names no problem.
        return f"{exc.filename} is a file, where a folder is needed"
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _error(message: str | None) -> None:
    # rich is imported only when there is an error to show.
    from rich.text import Text

    from katapool.cli.common import err
    if message is None:
        err.print("interrupted")
    else:
        err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
