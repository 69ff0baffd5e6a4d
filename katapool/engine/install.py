"""``katapool engine install``: put a working KataGo under katapool's data directory.

Every install stages into a temporary directory next to its destination and is moved into
place only after the binary has answered ``katago version``; a failure removes the stage, so
nothing half-installed is ever left behind or recorded.
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from katapool import paths
from katapool.engine.backend import Backend
from katapool.engine.download import download, sha256_of, verify_sha256
from katapool.engine.manifest import EngineRecord, Manifest, load_manifest, save_manifest
from katapool.engine.probe import EngineInfo, check_launchable, probe_version
from katapool.errors import ChecksumError, EngineStartError, InstallError

# The KaTrain wheel on PyPI ships a Linux KataGo (OpenCL, AppImage) and a network.
KATRAIN_VERSION = "1.20.0"
KATRAIN_WHEEL = f"katrain-{KATRAIN_VERSION}-py3-none-any.whl"
KATRAIN_SHA256 = "489caa966fa395a6ad459239641a927e4a2057963370e450109fe77120de662f"
KATRAIN_BINARY = "katrain/KataGo/katago"
KATRAIN_MODEL_PREFIX = "katrain/models/"

RELEASE_BASE_URL = "https://github.com/lightvector/KataGo/releases/download"
# Asset-name tags of KataGo's Linux release zips; CUDA/TensorRT tags carry toolkit versions
# that change between releases, so `--asset` overrides the guess.
RELEASE_TAGS = {
    Backend.EIGEN: "eigen",
    Backend.OPENCL: "opencl",
    Backend.CUDA: "cuda12.5-cudnn8.9.7",
    Backend.TENSORRT: "trt10.2.0-cuda12.5",
}


LOCK_NAME = ".lock"
_lock_depth = 0  # this process's holds of engines_lock (flock is per open file, not process)


@contextmanager
def engines_lock() -> Iterator[None]:
    """One install, build or removal at a time per data directory, so two never swap the same
    folder or drop each other's manifest records. Once it is held, any stage or set-aside
    folder in ``engines/`` is what an install killed half-way left: it is removed."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    root = paths.engines_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / LOCK_NAME, "a")  # noqa: SIM115 (held across the yield)
    except OSError as exc:
        raise InstallError(f"cannot write to the engines folder {root}: {exc.strerror} (set "
                           "KATAPOOL_DATA_DIR to a writable place)") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another engine install or removal in {root} to finish",
                  file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            for leftover in root.glob(".stage-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            for leftover in root.glob(".old-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            yield
        finally:
            _lock_depth = 0


@contextmanager
def staging(final: Path) -> Iterator[Path]:
    """A stage next to ``final``, under the engines lock; the manifest is read first, so a
    damaged one stops the install before any download or unpacking."""
    with engines_lock():
        load_manifest()
        final.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".stage-{final.name}-"))
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def promote(stage: Path, final: Path) -> None:
    """Swap the staged directory into place, replacing an older install of the same name."""
    old = final.with_name(f".old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    stage.chmod(0o755)  # mkdtemp's 0700 would hide a system-wide install from service users
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)


def make_executable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def record_engine(record: EngineRecord) -> EngineRecord:
    with engines_lock():
        manifest = load_manifest()
        manifest.upsert(record)
        save_manifest(manifest)
    return record


def fetch_katrain_wheel(console: Console) -> Path:
    """The pinned KaTrain wheel from PyPI (cached; re-verified on every use)."""
    cached = paths.downloads_dir() / KATRAIN_WHEEL
    if cached.exists():
        try:
            verify_sha256(cached, KATRAIN_SHA256)
            return cached
        except InstallError:
            cached.unlink()
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".pip-") as tmp:
        console.print(f"[bold]downloading[/] katrain=={KATRAIN_VERSION} from PyPI (engine and network only)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, f"katrain=={KATRAIN_VERSION}"]
        if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
            raise InstallError("pip is not available in this Python environment: install pip, "
                               "or download the wheel yourself and pass --wheel FILE")
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        got = Path(tmp) / KATRAIN_WHEEL
        if proc.returncode != 0 or not got.exists():
            raise InstallError(f"pip could not download katrain=={KATRAIN_VERSION} from PyPI")
        verify_sha256(got, KATRAIN_SHA256)
        os.replace(got, cached)
    return cached


def install_from_katrain(console: Console, wheel: Path | None = None) -> EngineRecord:
    """KaTrain's bundled KataGo, extracted from its AppImage without FUSE."""
    _require_x86_64("KaTrain's wheel carries a Linux KataGo")
    if wheel is not None:
        if not wheel.is_file():
            raise InstallError(f"wheel not found: {wheel}")
        try:
            wheel_sha = verify_sha256(wheel, KATRAIN_SHA256)
        except ChecksumError:  # a local file: not a download gone wrong, the wrong file
            raise InstallError(f"--wheel {wheel} is not the KaTrain wheel katapool pins "
                               f"({KATRAIN_WHEEL}): sha256 mismatch, expected "
                               f"{KATRAIN_SHA256[:16]}...") from None
    else:
        wheel = fetch_katrain_wheel(console)
        wheel_sha = KATRAIN_SHA256
    name = f"katrain-{KATRAIN_VERSION}"
    final = paths.engines_dir() / name
    with staging(final) as stage:
        try:
            with zipfile.ZipFile(wheel) as zf:
                appimage = stage / "katago.AppImage"
                appimage.write_bytes(zf.read(KATRAIN_BINARY))
                models = [n for n in zf.namelist()
                          if n.startswith(KATRAIN_MODEL_PREFIX) and n.endswith(".bin.gz")]
                (stage / "models").mkdir()
                for member in models:
                    (stage / "models" / Path(member).name).write_bytes(zf.read(member))
        except (zipfile.BadZipFile, KeyError) as exc:
            raise InstallError(f"{wheel} is not a usable KaTrain wheel: {exc}") from None
        make_executable(appimage)
        console.print("extracting the KataGo AppImage (no FUSE needed)")
        proc = subprocess.run([str(appimage), "--appimage-extract"], cwd=stage,
                              capture_output=True, text=True)
        launcher = stage / "squashfs-root" / "AppRun"
        if proc.returncode != 0 or not launcher.exists():
            raise InstallError(f"could not extract the KataGo AppImage: {proc.stderr.strip()[-300:]}")
        appimage.unlink()
        info = checked_probe(launcher)
        promote(stage, final)
        # Recorded under the same hold of the lock: another install waits for both.
        model_files = sorted((final / "models").glob("*.bin.gz"))
        return record_engine(EngineRecord(
            name=name, version=info.version, backend=info.backend,
            path=final / "squashfs-root" / "AppRun", sha256=wheel_sha, source="katrain",
            managed=True, directory=final, model=model_files[0] if model_files else None,
            git_revision=info.git_revision,
        ))


def _extract_zip(archive: Path, dest: Path) -> None:
    """Extract, keeping the Unix permission bits zipfile would drop, and refusing paths that
    escape ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = (dest / member.filename).resolve()
            if not target.is_relative_to(root):
                raise InstallError(f"{archive.name} holds an unsafe path: {member.filename}")
            written = Path(zf.extract(member, dest))
            mode = (member.external_attr >> 16) & 0o777
            if mode and not member.is_dir():
                written.chmod(mode)


def _require_x86_64(source: str) -> None:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        raise InstallError(f"{source} for x86-64 only, not {machine}: build KataGo for this "
                           "machine and register it with `katapool engine install --path BINARY`")


def release_asset(version: str, backend: Backend) -> str:
    _require_x86_64("KataGo publishes Linux releases")
    if backend not in RELEASE_TAGS:
        raise InstallError(f"KataGo publishes no Linux release for backend {backend.value}")
    return f"katago-v{version}-{RELEASE_TAGS[backend]}-linux-x64.zip"


def install_from_release(
    console: Console,
    version: str,
    backend: Backend,
    sha256: str | None = None,
    base_url: str | None = None,
    asset: str | None = None,
) -> EngineRecord:
    """An official KataGo Linux release zip."""
    version = version.lstrip("v")
    asset = asset or release_asset(version, backend)
    base = (base_url or os.environ.get("KATAPOOL_RELEASE_BASE_URL") or RELEASE_BASE_URL).rstrip("/")
    url = f"{base}/v{version}/{asset}"
    name = f"katago-{version}-{backend.value}"
    final = paths.engines_dir() / name
    with staging(final) as stage:
        archive = download(url, stage / asset, console)
        if sha256:
            digest = verify_sha256(archive, sha256)
        else:
            digest = sha256_of(archive)
            console.print(f"[yellow]no sha256 given; recorded {digest} for {asset}[/]")
        try:
            _extract_zip(archive, stage / "dist")
        except zipfile.BadZipFile:
            raise InstallError(f"{asset} from {url} is not a zip archive") from None
        except (OSError, zlib.error, NotImplementedError) as exc:
            raise InstallError(f"could not unpack {asset}: {exc}") from None
        archive.unlink()
        # The shallowest `katago` is the program; deeper ones belong to bundled layouts.
        found = sorted((p for p in (stage / "dist").rglob("katago") if p.is_file()),
                       key=lambda p: len(p.parts))
        if not found:
            raise InstallError(f"{asset} holds no 'katago' binary")
        binary = found[0]
        make_executable(binary)
        info = checked_probe(binary)
        relative = binary.relative_to(stage)
        promote(stage, final)
        models = sorted(final.rglob("*.bin.gz"))
        return record_engine(EngineRecord(
            name=name, version=info.version, backend=info.backend, path=final / relative,
            sha256=digest, source="release", managed=True, directory=final,
            model=models[0] if models else None, git_revision=info.git_revision,
        ))


def install_from_path(binary: Path, name: str | None = None) -> EngineRecord:
    """Register an existing binary; katapool never deletes it."""
    binary = binary.expanduser().absolute()
    taken = load_manifest().get(name) if name else None
    if taken is not None and taken.managed:
        # Replacing its record would orphan the folder katapool installed (hundreds of MB).
        raise InstallError(f"--name {name}: that is the name of an engine katapool installed "
                           f"({taken.path}); choose another name, or remove it first "
                           f"(`katapool engine remove {name}`)")
    try:
        check_launchable(binary)
    except EngineStartError as exc:
        raise InstallError(str(exc)) from None
    info = checked_probe(binary)
    return record_engine(EngineRecord(
        name=name or f"path-{info.version}-{info.backend.value}", version=info.version,
        backend=info.backend, path=binary, sha256=sha256_of(binary.resolve()), source="path",
        managed=False, directory=None, git_revision=info.git_revision,
    ))


def _no_engine_named(name: str, manifest: Manifest) -> InstallError:
    known = ", ".join(e.name for e in manifest.engines) or "none installed"
    return InstallError(f"no engine named {name!r} (known: {known})")


def remove_engine(name: str) -> EngineRecord:
    with engines_lock():
        manifest = load_manifest()
        record = manifest.remove(name)
        if record is None:
            raise _no_engine_named(name, manifest)
        if record.managed and record.directory \
                and record.directory.is_relative_to(paths.engines_dir()):
            shutil.rmtree(record.directory, ignore_errors=True)
        save_manifest(manifest)
    return record


def set_default_engine(name: str) -> EngineRecord:
    """Make an installed engine the default (`engine list` marks it) without reinstalling."""
    with engines_lock():
        manifest = load_manifest()
        record = manifest.get(name)
        if record is None:
            raise _no_engine_named(name, manifest)
        if not record.path.exists():
            raise InstallError(f"engine {name!r} is missing its binary {record.path}: put it "
                               f"back or remove it (`katapool engine remove {name}`)")
        manifest.default = name
        save_manifest(manifest)
    return record


def checked_probe(binary: Path) -> EngineInfo:
    try:
        return probe_version(binary)
    except EngineStartError as exc:
        raise InstallError(f"installed binary does not run: {exc}") from None
