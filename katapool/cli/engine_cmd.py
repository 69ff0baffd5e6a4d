"""``katapool engine install | build | list | info | default | remove``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from katapool.cli.common import add_engine_args, engine_from_args, err, out
from katapool.cli.shared_options import add_model
from katapool.devices.discover import opencl_devices
from katapool.engine import build_source
from katapool.engine import install as installer
from katapool.engine.advice import cpu_only_hint
from katapool.engine.backend import Backend
from katapool.engine.discovery import reinstall_command, resolve_model
from katapool.engine.manifest import load_manifest
from katapool.errors import InstallError, KatapoolError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    engine = sub.add_parser("engine", help="install, list, inspect and remove KataGo engines")
    esub = engine.add_subparsers(dest="engine_cmd", required=True, metavar="COMMAND")

    inst = esub.add_parser("install", help="install a KataGo engine",
                           description="Install KataGo: from the pinned KaTrain wheel on PyPI "
                           "(default), an official release zip, or register an existing binary.")
    inst.add_argument("--from", dest="source", choices=["katrain", "release"], default=None,
                      help="where to get KataGo (default: katrain)")
    inst.add_argument("--path", type=Path, help="register an existing katago binary instead")
    inst.add_argument("--fastest", action="store_true",
                      help="the fastest engine this machine can get without compiling (KaTrain's; "
                      "on a machine without a GPU, also KataGo's Eigen release where github.com "
                      "answers), saying which and why")
    inst.add_argument("--name", help="name to record (with --path)")
    inst.add_argument("--wheel", type=Path, help="use this KaTrain wheel file instead of downloading")
    inst.add_argument("--version", help="release version, e.g. 1.16.4 (with --from release)")
    inst.add_argument("--backend", help="eigen|opencl|cuda|trt (with --from release)")
    inst.add_argument("--sha256", help="expected sha256 of the release zip")
    inst.add_argument("--base-url", help="release download base URL (mirrors, tests)")
    inst.add_argument("--asset", help="release asset file name, overriding the guessed one")
    inst.set_defaults(func=cmd_install)

    build = esub.add_parser(
        "build", help="compile KataGo from source for a backend and install it",
        description="Compile KataGo (CMake) for one backend and install it like any engine. "
        "Checks the build prerequisites first and names the command that installs each missing "
        "one. Without --source, downloads a pinned release's source tarball from GitHub.")
    build.add_argument("--backend", default="eigen",
                       help="eigen (CPU, default), opencl, cuda or tensorrt")
    src = build.add_mutually_exclusive_group()
    src.add_argument("--source", type=Path, metavar="DIR|TARBALL",
                     help="a KataGo checkout or source tarball (default: download --version)")
    src.add_argument("--version", help="KataGo release to download the source of "
                     f"(default {build_source.DEFAULT_VERSION}; pinned: "
                     f"{', '.join(sorted(build_source.PINNED_SOURCES))})")
    build.add_argument("--sha256", help="expected sha256 of the downloaded tarball "
                       "(needed for versions not pinned)")
    build.add_argument("--base-url", help="where to download tags' tarballs from (mirrors, tests)")
    build.add_argument("--avx2", choices=["auto", "on", "off"], default="auto",
                       help="Eigen: compile with AVX2/FMA (default auto: if this CPU has them)")
    build.add_argument("--name", help="name to record (default katago-VERSION-BACKEND-build)")
    build.add_argument("--jobs", "-j", type=int, metavar="N",
                       help="parallel compile jobs (default: one per CPU)")
    add_model(build, "network for the one-position check (default: an installed engine's "
              "bundled one, else KataGo's built-in tiny network)", type=Path, metavar="NET")
    build.add_argument("--download-only", action="store_true",
                       help="fetch and verify the source tarball, print its path, build nothing")
    build.set_defaults(func=cmd_build)

    lst = esub.add_parser("list", help="list installed engines")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)

    info = esub.add_parser("info", help="version, backend and health of an engine")
    add_engine_args(info)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    default = esub.add_parser("default", help="make an installed engine the default",
                              description="The engine every command uses when no --katago or "
                              "$KATAPOOL_KATAGO names one (`engine list` marks it with *).")
    default.add_argument("name")
    default.set_defaults(func=cmd_default)

    rm = esub.add_parser("remove", help="remove an installed engine")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)


def cmd_install(args: argparse.Namespace) -> int:
    if sum(map(bool, (args.path, args.source, args.fastest))) > 1:
        raise InstallError("use one of --path, --from and --fastest")
    if args.source != "release":
        # Release-only options never silently install something else (KaTrain's engine).
        stray = [flag for flag, value in (("--version", args.version), ("--backend", args.backend),
                                          ("--sha256", args.sha256), ("--asset", args.asset),
                                          ("--base-url", args.base_url)) if value]
        if stray:
            raise InstallError(f"{', '.join(stray)}: only with --from release "
                               f"(e.g. --from release --version 1.16.4 --backend eigen)")
    if args.backend:
        try:
            Backend.parse(args.backend)
        except ValueError as exc:
            raise InstallError(f"--backend {args.backend}: {exc}") from None
    why: str | None = None
    if args.fastest:
        from katapool.engine.fastest import install_fastest

        choice = install_fastest(err)
        record, why = choice.record, choice.why
    elif args.path:
        record = installer.install_from_path(args.path, args.name)
    elif args.source == "release":
        if not args.version or not args.backend:
            raise InstallError("--from release needs --version V and --backend eigen|opencl|cuda|trt")
        try:
            backend = Backend.parse(args.backend)
        except ValueError as exc:
            raise InstallError(str(exc)) from None
        record = installer.install_from_release(err, args.version, backend, sha256=args.sha256,
                                                base_url=args.base_url, asset=args.asset)
    else:
        record = installer.install_from_katrain(err, wheel=args.wheel)
    out.print(f"installed [bold]{record.name}[/]: KataGo {record.version} ({record.backend.label}) "
              f"at {record.path}")
    if record.model:
        out.print(f"bundled network: {record.model}")
    if why is not None:  # --fastest says why it chose this engine instead of a hint
        err.print(f"[bold]engine:[/] {record.name}, because {why}", soft_wrap=True, highlight=False)
    elif hint := cpu_only_hint(record):
        err.print(f"[bold]hint:[/] {hint}", soft_wrap=True, highlight=False)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from katapool.engine.build import BuildRequest, build_engine, download_source, parse_backend

    if args.jobs is not None and args.jobs < 1:
        raise InstallError(f"--jobs must be at least 1 (got {args.jobs})")
    request = BuildRequest(backend=parse_backend(args.backend), source=args.source,
                           version=args.version, sha256=args.sha256, base_url=args.base_url,
                           avx2=args.avx2, name=args.name, jobs=args.jobs, model=args.model)
    if args.download_only:
        if args.source is not None:
            raise InstallError("--download-only fetches a --version; --source is already here")
        out.print(str(download_source(err, request)))
        return 0
    record = build_engine(err, request)
    out.print(f"installed [bold]{record.name}[/]: KataGo {record.version} ({record.backend.label}) "
              f"at {record.path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    manifest = load_manifest()
    if args.json:
        out.print_json(manifest.model_dump_json())
        return 0
    if not manifest.engines:
        out.print("no engines installed: run `katapool engine install`")
        return 0
    table = Table("", "name", "version", "backend", "source", "path")
    missing = [e for e in manifest.engines if not e.path.exists()]
    for e in manifest.engines:
        table.add_row("*" if e.name == manifest.default else "", e.name, e.version,
                      e.backend.label, e.source,
                      str(e.path) + (" [bold red](missing)[/]" if e in missing else ""))
    out.print(table)
    for e in missing:
        out.print(f"{e.name}: its binary is gone; put it back (`{reinstall_command(e)}`) "
                  f"or forget it (`katapool engine remove {e.name}`)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    # A network named by -model must be one (not just a skipped device check).
    named_model = resolve_model(args.model) if args.model else None
    choice = engine_from_args(args, fresh=True)  # a health check: asked now, not remembered
    info = choice.info
    data: dict[str, object] = {
        "path": str(info.path), "origin": choice.resolved.origin, "version": info.version,
        "backend": info.backend.label, "git_revision": info.git_revision,
    }
    record = choice.resolved.record
    if record is not None and record.build_options:
        data["built_with"] = " ".join(record.build_options)
    if info.backend is Backend.OPENCL:
        try:
            model = named_model or resolve_model(None, choice.resolved)
            devices, why = opencl_devices(info.path, model, fresh=True)
            data["opencl_devices"] = [f"{d.index}: {d.name}" for d in devices]
            if why:
                data["opencl_problem"] = why
        except KatapoolError as exc:
            data["opencl_problem"] = f"device check skipped: {exc}"
    if args.json:
        out.print(json.dumps(data, indent=2))
        return 0
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        table.add_row(key.replace("_", " "), "\n".join(value) if isinstance(value, list) else str(value))
    out.print(table)
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    record = installer.set_default_engine(args.name)
    out.print(f"default engine: [bold]{record.name}[/] (KataGo {record.version}, "
              f"{record.backend.label}, {record.path})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    record = installer.remove_engine(args.name)
    out.print(f"removed {record.name}" + ("" if record.managed else " (binary left in place)"))
    return 0
