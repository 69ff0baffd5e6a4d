"""``katapool engine build``: compile KataGo for a backend and install the result like any other
engine: staged next to its destination, checked (``katago version`` and one evaluated
position), moved into place atomically and recorded in the manifest.

The build tree lives in the cache directory and is removed afterwards; the full CMake and
compiler output stays in the data directory's logs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from katapool import paths
from katapool.engine import install
from katapool.engine.backend import Backend
from katapool.engine.build_log import BuildProgress, compiled_file, first_error, percent_of, run_logged
from katapool.engine.build_prereqs import BUILDABLE, missing_prereqs, prereq_message
from katapool.engine.build_source import DEFAULT_VERSION, SourceTree, check_tree, fetch_source, unpack
from katapool.engine.diagnose import diagnose
from katapool.engine.download import sha256_of
from katapool.engine.manifest import EngineRecord, load_manifest
from katapool.engine.probe import EngineInfo
from katapool.errors import InstallError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
CHECK_TIMEOUT = 1800.0  # a first TensorRT start builds its plan: minutes on a small GPU


@dataclass(frozen=True)
class BuildRequest:
    backend: Backend
    source: Path | None = None  # a checkout or a tarball; None: download `version`
    version: str | None = None
    sha256: str | None = None  # of the tarball to download (default: the pinned one)
    base_url: str | None = None
    avx2: str = "auto"  # auto | on | off
    name: str | None = None
    jobs: int | None = None
    model: Path | None = None  # network for the one-position check


def parse_backend(text: str) -> Backend:
    try:
        backend = Backend.parse(text)
    except ValueError:
        backend = Backend.UNKNOWN
    known = ", ".join(b.value for b in BUILDABLE)
    if backend is Backend.UNKNOWN:
        raise InstallError(f"unknown backend {text!r} (buildable: {known})")
    if backend not in BUILDABLE:
        raise InstallError(f"katapool does not build the {backend.label} backend "
                           f"(buildable: {known})")
    return backend


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def want_avx2(choice: str, backend: Backend, flags: set[str] | None = None) -> bool:
    """KataGo's USE_AVX2 (Eigen only) compiles with -mavx2 -mfma: a binary that needs both."""
    if backend is not Backend.EIGEN or choice == "off":
        return False
    has = {"avx2", "fma"} <= (cpu_flags() if flags is None else flags)
    if choice == "on" and not has:
        raise InstallError("--avx2 on: this CPU lacks AVX2/FMA, and the engine would not run "
                           "here (use --avx2 off)")
    if choice not in ("auto", "on"):
        raise InstallError(f"--avx2 {choice}: use auto, on or off")
    return has


def cmake_options(backend: Backend, avx2: bool, git_revision: bool) -> list[str]:
    options = [f"-DUSE_BACKEND={backend.value.upper()}", "-DCMAKE_BUILD_TYPE=Release"]
    if backend is Backend.EIGEN:
        options.append(f"-DUSE_AVX2={int(avx2)}")
    if not git_revision:  # a tarball has no .git for CMake's `git describe`
        options.append("-DNO_GIT_REVISION=1")
    return options


def _check_model(explicit: Path | None) -> Path | None:
    """A network for the one-position check: the one given, else one an installed engine
    bundles (KaTrain's). None: the check uses KataGo's built-in tiny network."""
    if explicit is not None:
        if not explicit.is_file():
            raise InstallError(f"--model {explicit}: no such file")
        return explicit.absolute()
    env = os.environ.get("KATAPOOL_MODEL")
    if env and Path(env).is_file():
        return Path(env).absolute()
    return next((e.model for e in load_manifest().engines if e.model and e.model.is_file()), None)


def check_one_position(info: EngineInfo, model: Path | None, workdir: Path) -> str:
    """Evaluate one position with the new engine; what was checked, or an InstallError."""
    from katapool.config.build import build_config
    from katapool.config.settings import Mode

    if model is None:
        # KataGo's own test of its built-in tiny network: evaluates positions, needs no file.
        argv = [str(info.path), "runtinynntests", str(workdir), "1.0"]
        what = "KataGo's built-in tiny network"
        feed = None
    else:
        cfg = workdir / "check.cfg"
        cfg.write_text(build_config(mode=Mode.GTP, info=info, model=model, preset="desktop",
                                    log_dir=workdir / "logs").text)
        argv = [str(info.path), "gtp", "-config", str(cfg), "-model", str(model)]
        what = model.name
        feed = "kata-raw-nn 0\nquit\n"
    try:
        proc = subprocess.run(argv, input=feed, capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT, cwd=workdir,  # the tiny test logs to ./
                              stdin=subprocess.DEVNULL if feed is None else None)
    except subprocess.TimeoutExpired:
        raise InstallError(f"the built engine evaluated no position within {CHECK_TIMEOUT:.0f} s") \
            from None
    answered = proc.returncode == 0 and (feed is None or "whiteWin" in proc.stdout)
    if not answered:
        raise InstallError("the built engine failed its one-position check with "
                           f"{what}: {diagnose(proc.stdout + proc.stderr, proc.returncode)}")
    return what


class Builder:
    """One build: source → configure → compile → check → install."""

    def __init__(self, console: Console, request: BuildRequest) -> None:
        self.console = console
        self.req = request
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log = paths.logs_dir() / f"engine-build-{stamp}-{request.backend.value}.log"
        self.env = {**os.environ, "LC_ALL": "C"}  # English, ASCII-quoted compiler messages

    def source(self, work: Path) -> SourceTree:
        req = self.req
        if req.source is not None:
            src = req.source.expanduser()
            if src.is_dir():
                return check_tree(src, str(req.source))
            if not src.is_file():
                raise InstallError(f"--source {req.source}: no such file or directory")
            return unpack(src, work / "src", str(req.source))
        version = req.version or DEFAULT_VERSION
        archive, digest = fetch_source(self.console, version, req.sha256, req.base_url)
        return unpack(archive, work / "src", archive.name, digest)

    def run_step(self, what: str, cmd: list[str], progress: BuildProgress | None) -> None:
        current: list[str | None] = [None]

        def on_line(line: str) -> None:
            if progress is None:
                return
            current[0] = compiled_file(line) or current[0]
            pct = percent_of(line)
            if pct is not None:
                progress.update(pct, current[0])

        code, lines = run_logged(cmd, self.log, self.env, on_line)
        if code == 0:
            return
        block = first_error(lines)
        if block:
            self.console.print(f"[bold]first error of the {what}:[/]")
            for line in block:
                self.console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
        headline = block[0].strip() if block else (lines[-1].strip() if lines else f"exit {code}")
        raise InstallError(f"KataGo's {what} failed: {headline} (full log: {self.log})")

    def build(self) -> EngineRecord:
        req = self.req
        missing = missing_prereqs(req.backend)
        if missing:
            raise InstallError(prereq_message(req.backend, missing))
        if req.name is not None and not _NAME_RE.match(req.name):
            raise InstallError(f"--name {req.name!r}: use letters, digits, '.', '_', '+' or '-'")
        avx2 = want_avx2(req.avx2, req.backend)
        model = _check_model(req.model)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        paths.builds_dir().mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=paths.builds_dir(), prefix="katago-"))
        try:
            return self._build_in(work, avx2, model)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _build_in(self, work: Path, avx2: bool, model: Path | None) -> EngineRecord:
        req = self.req
        tree = self.source(work)
        options = cmake_options(req.backend, avx2, tree.has_git_revision())
        version = tree.version or "unknown"
        name = req.name or f"katago-{version}-{req.backend.value}-build"
        jobs = req.jobs or os.cpu_count() or 1
        began = time.monotonic()
        flavour = req.backend.label + (" with AVX2" if avx2 else "")
        self.console.print(f"building KataGo {version} ({flavour}) from {escape(tree.origin)}; "
                           f"log: {escape(str(self.log))}", highlight=False, soft_wrap=True)
        self.console.print(f"configuring: cmake {' '.join(options)}", highlight=False,
                           soft_wrap=True)
        build_dir = work / "build"
        self.run_step("configuration (CMake)", ["cmake", "-S", str(tree.cpp), "-B", str(build_dir),
                                                *options], None)
        with BuildProgress(self.console) as progress:
            progress.phase(f"compiling with {jobs} job{'s' if jobs != 1 else ''} "
                           "(KataGo is about 130 C++ files)")
            self.run_step("compilation", ["cmake", "--build", str(build_dir), "--parallel",
                                          str(jobs)], progress)
        took = time.monotonic() - began
        binary = build_dir / "katago"
        if not binary.is_file():
            raise InstallError(f"the build finished without a katago program (log: {self.log})")
        final = paths.engines_dir() / name
        with install.staging(final) as stage:
            shutil.copy2(binary, stage / "katago")
            info = install.checked_probe(stage / "katago")
            if info.backend is not req.backend:
                raise InstallError(f"asked for the {req.backend.label} backend, the built engine "
                                   f"reports {info.backend.label}")
            checked = check_one_position(info, model, work)
            install.promote(stage, final)
            record = install.record_engine(EngineRecord(
                name=name, version=info.version, backend=info.backend, path=final / "katago",
                sha256=tree.sha256 or sha256_of(final / "katago"), source="build",
                managed=True, directory=final, git_revision=info.git_revision,
                build_options=options,
            ))
        self.console.print(f"built in {took / 60:.1f} min; `katago version` and one position "
                           f"({escape(checked)}) checked", highlight=False)
        return record


def build_engine(console: Console, request: BuildRequest) -> EngineRecord:
    return Builder(console, request).build()


def download_source(console: Console, request: BuildRequest) -> Path:
    """Only fetch and verify the source tarball (to build later, or on another machine)."""
    archive, _ = fetch_source(console, request.version or DEFAULT_VERSION, request.sha256,
                              request.base_url)
    return archive
