"""The options many commands share, declared in one place so that each has the same
spellings everywhere: KataGo's single-dash ones (``-model``, as GUIs launch ``katago``) and
the double-dash ones, with one device syntax (``katapool.devices.spec``) behind
``--device`` and ``--gpus`` alike."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from katapool.config.preset_files import preset_names
from katapool.devices.model import DeviceKind
from katapool.devices.spec import SYNTAX, DeviceRef, parse_devices
from katapool.errors import ConfigError

# The single source of the spellings: the commands use them through the helpers below, and
# tests/test_cli_spellings.py checks every command against this table.
SPELLINGS: dict[str, tuple[str, ...]] = {
    "model": ("-model", "--model"),
    "config": ("-config", "--config"),
    "human_model": ("-human-model", "--human-model"),
    "override_config": ("-override-config", "--override-config"),
    "device": ("--device", "--gpus", "-device", "-gpus"),
    "katago": ("-katago", "--katago"),
}


def add_model(p: argparse.ArgumentParser, help: str, **kwargs: Any) -> None:
    p.add_argument(*SPELLINGS["model"], dest="model", metavar=kwargs.pop("metavar", "FILE"),
                   help=help, **kwargs)


def add_katago(p: argparse.ArgumentParser, help: str = "KataGo binary", **kwargs: Any) -> None:
    p.add_argument(*SPELLINGS["katago"], dest="katago", metavar="PATH", help=help, **kwargs)


def add_human_model(p: argparse.ArgumentParser, help: str = "human SL network") -> None:
    p.add_argument(*SPELLINGS["human_model"], dest="human_model", metavar="FILE", help=help)


def add_config(p: argparse.ArgumentParser, help: str, *, many: bool = True) -> None:
    """``many``: repeatable, as KataGo takes several ``-config`` files."""
    if many:
        p.add_argument(*SPELLINGS["config"], dest="config", action="append", default=[],
                       type=Path, metavar="FILE", help=help)
    else:
        p.add_argument(*SPELLINGS["config"], dest="config", type=Path, metavar="FILE", help=help)


def add_override_config(p: argparse.ArgumentParser, help: str = "KataGo settings, "
                        "key=value[,key=value] (repeatable)", also: Sequence[str] = ()) -> None:
    p.add_argument(*SPELLINGS["override_config"], *also, dest="override_config",
                   action="append", default=[], metavar="KEY=VALUE", help=help)


class _DeviceAction(argparse.Action):
    """Parses the device syntax as the command line is read: a typo is one line naming the
    flag, before any engine starts. Stores ``list[DeviceRef]``, or None for ``auto``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        text = str(values)
        try:
            refs = parse_devices(text)
        except ConfigError as exc:
            raise ConfigError(f"{option_string} {text!r}: {exc}") from None
        setattr(namespace, self.dest, refs)
        namespace.device_flag = option_string


def add_device(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument(*SPELLINGS["device"], dest="device", action=_DeviceAction, default=None,
                   metavar="DEVICES", help=f"{help}; {SYNTAX}")
    p.set_defaults(device_flag="--device")


def device_spec(args: argparse.Namespace) -> str:
    """The devices given, as the spec config generation takes (``auto`` when none)."""
    refs: list[DeviceRef] | None = args.device
    return ",".join(r.spec for r in refs) if refs else "auto"


def gpu_indices(args: argparse.Namespace, what: str) -> list[int] | None:
    """For commands that put one member on each listed GPU: the NVIDIA indices (None:
    auto). ``what`` names the command in the error."""
    refs: list[DeviceRef] | None = args.device
    if refs is None:
        return None
    if any(r.kind is not DeviceKind.NVIDIA for r in refs):
        text = ",".join(r.text or r.spec for r in refs)
        raise ConfigError(f"{args.device_flag} {text}: {what} puts one member on each NVIDIA "
                          "GPU listed (0,1 or gpu:0,gpu:1); leave it out for the best device "
                          "found")
    return [r.index for r in refs]


def add_preset(p: argparse.ArgumentParser, default: str, what: str = "preset for generated "
               "configs") -> None:
    p.add_argument("--preset", default=default, metavar="NAME",
                   help=f"{what}: {', '.join(preset_names())} (default: {default})")


class _PolicyAction(argparse._AppendAction):
    """``--policy key=value`` (repeatable); ``--policy help`` lists every key and exits."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if str(values).strip().lower() == "help":
            from katapool.config.policy import policy_help  # pydantic: only when asked

            rows = policy_help()
            key_w = max(len("key"), *(len(k) for k, _, _ in rows))
            default_w = max(len("default"), *(len(d) for _, d, _ in rows))
            print(f"{'key':<{key_w}}  {'default':<{default_w}}  meaning")
            for key, default, meaning in rows:
                print(f"{key:<{key_w}}  {default:<{default_w}}  {meaning}")
            parser.exit(0)
        super().__call__(parser, namespace, values, option_string)


def add_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", action=_PolicyAction, default=[], metavar="KEY=VALUE",
                   help="pool policy setting, e.g. functional_deadline=30 (repeatable; "
                        "`--policy help` lists every key, its default and meaning)")
