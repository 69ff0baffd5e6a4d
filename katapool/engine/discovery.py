"""Find the KataGo binary: ``--katago``, ``KATAPOOL_KATAGO``, the manifest, then ``PATH``."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from katapool.engine.manifest import EngineRecord, load_manifest
from katapool.errors import EngineNotFoundError, ModelError
from katapool.models.reader import check_network_file

Origin = Literal["flag", "environment", "manifest", "PATH"]


@dataclass(frozen=True)
class ResolvedEngine:
    path: Path
    origin: Origin
    record: EngineRecord | None = None


def resolve_engine(explicit: str | os.PathLike[str] | None = None) -> ResolvedEngine:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise EngineNotFoundError(f"--katago {path}: no such file")
        return ResolvedEngine(path.absolute(), "flag", _record_for(path))
    env = os.environ.get("KATAPOOL_KATAGO")
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise EngineNotFoundError(f"KATAPOOL_KATAGO={env}: no such file")
        return ResolvedEngine(path.absolute(), "environment", _record_for(path))
    manifest = load_manifest()
    record = manifest.default_engine()
    if record is not None:
        if not record.path.exists():
            raise missing_binary(record, manifest_names=[e.name for e in manifest.engines])
        return ResolvedEngine(record.path, "manifest", record)
    on_path = shutil.which("katago")
    if on_path:
        return ResolvedEngine(Path(on_path), "PATH")
    raise EngineNotFoundError(
        "no KataGo engine found: run `katapool engine install` (or pass --katago PATH)"
    )


def reinstall_command(record: EngineRecord) -> str:
    """The command that puts ``record``'s engine back as it was installed."""
    if record.source == "release":
        return (f"katapool engine install --from release --version {record.version} "
                f"--backend {record.backend.value}")
    if record.source == "build":
        return f"katapool engine build --backend {record.backend.value} --name {record.name}"
    if record.source == "path":
        return f"katapool engine install --path BINARY --name {record.name}"
    return "katapool engine install"


def missing_binary(record: EngineRecord, manifest_names: list[str]) -> EngineNotFoundError:
    """The default engine's binary is gone (its folder deleted, a --path binary moved): name
    the ways out, the other installed engines included."""
    others = [n for n in manifest_names if n != record.name]
    remove = f"katapool engine remove {record.name}"
    then = f"; then {others[-1]} is the default" if others else ""
    return EngineNotFoundError(
        f"installed engine {record.name!r} is missing its binary {record.path}: put it back "
        f"(`{reinstall_command(record)}`) or forget it (`{remove}`{then})",
        fix=remove if others or record.source == "path" else reinstall_command(record))


def _record_for(path: Path) -> EngineRecord | None:
    target = path.absolute()
    return next((e for e in load_manifest().engines if e.path == target), None)


def resolve_model(
    explicit: str | os.PathLike[str] | None = None, engine: ResolvedEngine | None = None
) -> Path:
    """A network: ``--model``, ``KATAPOOL_MODEL``, else the one bundled with the engine, else
    one bundled with another installed engine (an Eigen build or release brings none; KaTrain's
    engine does). A network the user names is checked to be one (its header only: cheap);
    the manifest's are trusted."""
    candidate = explicit or os.environ.get("KATAPOOL_MODEL")
    if candidate:
        path = Path(candidate).expanduser()
        if path.is_dir():
            raise ModelError(f"model {path} is a folder: give the network file in it "
                             "(.bin.gz)")
        if not path.is_file():
            raise ModelError(f"model not found: {path}")
        check_network_file(path)  # a named file that is no network: said now, not by the engine
        return path.absolute()
    manifest = load_manifest()
    record = engine.record if engine else manifest.default_engine()
    for other in ([record] if record is not None else []) + manifest.engines:
        if other.model and other.model.is_file():
            return other.model
    raise ModelError("no network given and none bundled with the installed engines: pass "
                     "--model FILE.bin.gz")
