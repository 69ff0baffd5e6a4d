"""The record of engines katapool installed or registered (``engines/manifest.json``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from katapool import paths
from katapool.engine.backend import Backend
from katapool.errors import KatapoolError

Source = Literal["katrain", "release", "path", "build"]


class EngineRecord(BaseModel):
    name: str
    version: str
    backend: Backend
    path: Path = Field(description="the program to launch")
    sha256: str = Field(description="sha256 of the downloaded artifact, or of the binary")
    source: Source
    managed: bool = Field(description="katapool owns `directory` and deletes it on remove")
    directory: Path | None = None
    model: Path | None = Field(default=None, description="network bundled with this engine")
    git_revision: str | None = None
    build_options: list[str] | None = Field(default=None,
                                            description="CMake options of a source build")
    installed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Manifest(BaseModel):
    default: str | None = None
    engines: list[EngineRecord] = []

    def get(self, name: str) -> EngineRecord | None:
        return next((e for e in self.engines if e.name == name), None)

    def default_engine(self) -> EngineRecord | None:
        if self.default:
            found = self.get(self.default)
            if found:
                return found
        return self.engines[0] if self.engines else None

    def upsert(self, record: EngineRecord, make_default: bool = True) -> None:
        self.engines = [e for e in self.engines if e.name != record.name] + [record]
        if make_default or self.default is None:
            self.default = record.name

    def remove(self, name: str) -> EngineRecord | None:
        found = self.get(name)
        if found:
            self.engines = [e for e in self.engines if e.name != name]
            if self.default == name:
                self.default = self.engines[-1].name if self.engines else None
        return found


def load_manifest(path: Path | None = None) -> Manifest:
    path = path or paths.manifest_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Manifest()
    except OSError as exc:
        # Typically another user's install (a service account's data dir): not damaged, so
        # deleting it is not the fix.
        fix = f"chmod a+r {path}"
        raise KatapoolError(f"cannot read the engine manifest {path}: {exc.strerror} (run as "
                            f"the user who installed the engines, or: {fix})", fix=fix) from None
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        problem = f"{where}: {first['msg']}" if where else first["msg"]
        # The engine folders survive it: an install records its engine again.
        fix = f"mv {path} {path}.damaged && katapool engine install"
        raise KatapoolError(f"engine manifest {path} is damaged ({problem}); set it aside "
                            f"and install again: {fix}", fix=fix) from None
    for record in manifest.engines:
        _follow_a_moved_data_dir(record, path.parent)
    return manifest


def _follow_a_moved_data_dir(record: EngineRecord, engines_dir: Path) -> None:
    """A managed engine recorded under another data directory (the folder was moved or copied,
    a home restored elsewhere, a cache unpacked at another path) is found where it now lies:
    its folder of the same name beside this manifest."""
    old = record.directory
    if not record.managed or old is None or old.exists():
        return
    new = engines_dir / old.name
    if not new.is_dir():
        return
    record.directory = new
    for field in ("path", "model"):
        value: Path | None = getattr(record, field)
        if value is not None:
            with contextlib.suppress(ValueError):  # a file outside its folder stays as it is
                setattr(record, field, new / value.relative_to(old))


def save_manifest(manifest: Manifest, path: Path | None = None) -> None:
    """Write atomically, so a crash never leaves a half-written manifest."""
    path = path or paths.manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(manifest.model_dump_json(indent=2))
        # mkstemp's 0600 would hide the engines from other users (a service account): the
        # engine folders are world-readable too (install.promote).
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
