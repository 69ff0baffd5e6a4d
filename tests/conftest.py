"""Shared fixtures: a real KataGo provisioned through katapool's own `engine install`, and an
Eigen KataGo compiled by `katapool engine build` from the shared source tarball.

The engine and the KaTrain wheel are cached under `.cache/` in the checkout between runs; the
Eigen build is cached outside the checkout (see `BUILD_CACHE`), keyed by the tarball's hash. A
machine that cannot provision either fails the run (engine tests never skip).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import processes

ROOT = Path(__file__).resolve().parents[1]
# The project's shared data sits beside the checkout (as in CI); a clone elsewhere points at
# it with KATAPOOL_SHARED_DIR.
SHARED = Path(os.environ.get("KATAPOOL_SHARED_DIR") or ROOT.parent / "shared").resolve()
MODELS = SHARED / "models"
CACHE = ROOT / ".cache"

G170 = MODELS / "g170-b6c96-s175395328-d26788732.bin.gz"
TRANSFORMER = MODELS / "b7c96h3tfrs-test5-cnorm.bin.gz"
TRANSFORMER_KV = MODELS / "b7c96h6kv3qk32v16tflrs-fson-bnh.bin.gz"
SAMPLE_SGF = ROOT / "examples" / "selfplay-b6c96.sgf"
# The shortest real game of the shared records (104 moves, against the sample's 248): for
# whole-game reviews whose subject is not the game (progress, errors, pipes, --connect).
SHORT_SGF = SHARED / "sgf" / "master-online" / "08-2016.12.29-Magist-Han_Yizou.sgf"
ENGINE_SRC = SHARED / "engine-src"
# Compiled engines outlive the checkout (a fresh clone, CI's cache): one build per source
# tarball and CPU flavour. KATAPOOL_TEST_BUILD_CACHE moves it.
BUILD_CACHE = Path(os.environ.get("KATAPOOL_TEST_BUILD_CACHE")
                   or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                   / "katapool-test" / "engine-builds")
BUILD_TIMEOUT = 3600  # KataGo's compile on a slow 2-core machine, with room


@dataclass
class Katapool:
    """Runs the `katapool` CLI as a user would, against one data directory."""

    env: dict[str, str]
    data_dir: Path

    def run(self, *args: str, timeout: float = 600, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "katapool", *args],
            capture_output=True, text=True, timeout=timeout, env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"katapool {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def manifest(self) -> dict[str, object]:
        path = self.data_dir / "engines" / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else {}


def _env(data: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KATAPOOL_")}
    env.update(KATAPOOL_DATA_DIR=str(data), KATAPOOL_CACHE_DIR=str(cache),
               COLUMNS="200", TERM="dumb")
    return env


@pytest.fixture(scope="session")
def kp() -> Katapool:
    """The session's katapool, with KaTrain's KataGo installed by `katapool engine install`
    and the OpenCL fast-start tuning prepared once."""
    assert G170.is_file(), (f"test networks missing: {G170} (the shared data belongs beside the "
                            f"checkout; set KATAPOOL_SHARED_DIR to use another place)")
    data, cache = CACHE / "test-data", CACHE / "test-downloads"
    tool = Katapool(_env(data, cache), data)
    # pytest-xdist workers: the first sets it up, the others find it done (a second install
    # would replace the engine under the first worker's running tests).
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    done = CACHE / ".test-data.ready"
    with _locked(CACHE / ".test-data.lock"):
        if not run or not done.exists() or done.read_text() != run:
            tool.run("engine", "install", check=True, timeout=900)
            tool.run("prepare", "--fast", "--model", str(G170), check=True)
            done.write_text(run or "")
    return tool


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def katago(kp: Katapool) -> Path:
    record = kp.manifest()["engines"][0]  # type: ignore[index]
    return Path(record["path"])  # type: ignore[index]


def source_tarball() -> Path:
    found = sorted(ENGINE_SRC.glob("KataGo-*.tar.gz"))
    assert found, f"KataGo source tarball missing from {ENGINE_SRC} (shared data)"
    return found[-1]


@dataclass
class EigenBuild:
    binary: Path
    tarball: Path
    builder: Katapool  # the data directory `katapool engine build` installed it into


@pytest.fixture(scope="session")
def eigen_build() -> EigenBuild:
    """The Eigen KataGo, built once per source tarball by the real `katapool engine build`
    into a cache outside the checkout; later runs reuse it (a lock serialises parallel runs)."""
    from katapool.engine.build import cpu_flags

    tarball = source_tarball()
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    flavour = "avx2" if {"avx2", "fma"} <= cpu_flags() else "generic"
    home = BUILD_CACHE / f"{digest[:16]}-eigen-{flavour}"
    home.mkdir(parents=True, exist_ok=True)
    builder = Katapool(_env(home / "data", home / "cache"), home / "data")
    binary = home / "data" / "engines" / "eigen-test" / "katago"
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if builder.run("engine", "info", "--katago", str(binary)).returncode != 0:
            builder.run("engine", "build", "--backend", "eigen", "--source", str(tarball),
                        "--name", "eigen-test", check=True, timeout=BUILD_TIMEOUT)
    return EigenBuild(binary, tarball, builder)


@pytest.fixture(scope="session")
def eigen_katago(eigen_build: EigenBuild) -> Path:
    return eigen_build.binary


@pytest.fixture(scope="session")
def both_kp(kp: Katapool, katago: Path, eigen_katago: Path) -> Katapool:
    """A data directory with both engines registered: KaTrain's OpenCL build, then the Eigen
    build (the default). Apart from `kp`'s, whose tests count on one engine."""
    data = CACHE / "test-data-both"
    tool = Katapool(_env(data, CACHE / "test-downloads"), data)
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    done = CACHE / ".test-data-both.ready"
    with _locked(CACHE / ".test-data-both.lock"):
        if not run or not done.exists() or done.read_text() != run:
            tool.run("engine", "install", "--path", str(katago), "--name", "katrain-opencl",
                     check=True)
            tool.run("engine", "install", "--path", str(eigen_katago), "--name", "eigen",
                     check=True)
            done.write_text(run or "")
    return tool


@pytest.fixture(scope="session")
def models() -> dict[str, Path]:
    found = {p.name: p for p in MODELS.glob("*.bin.gz")}
    assert G170.name in found, f"test networks missing from {MODELS}"
    return found


@pytest.fixture
def fresh_kp(tmp_path: Path) -> Katapool:
    """An empty katapool data directory (the download cache is shared, to save time)."""
    return Katapool(_env(tmp_path / "data", CACHE / "test-downloads"), tmp_path / "data")


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point in-process katapool calls at a private data directory."""
    for key in list(os.environ):
        if key.startswith("KATAPOOL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("KATAPOOL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KATAPOOL_CACHE_DIR", str(tmp_path / "cache"))
    yield tmp_path


# --- no process outlives its test, nor the run -------------------------------------------------

processes.mark_this_run()
LEAK_GRACE = 15.0  # seconds a stopped process may take to exit before it counts as leaked


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    report = yield
    if getattr(report, "when", None) == "call":
        item.stash[_FAILED] = bool(getattr(report, "failed", False))
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _stops_what_it_starts(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test (with its function fixtures) stops every process it started. A failing test's
    leftovers are killed quietly, so they cannot slow the rest of the run; a passing test that
    leaves one fails here, naming it."""
    before = processes.snapshot()
    yield
    left = processes.wait_gone(processes.started_since(before), LEAK_GRACE)
    if not left:
        return
    text = processes.describe(left)
    processes.kill_all(left)
    if not request.node.stash.get(_FAILED, False):
        pytest.fail(f"the test left processes running (now killed):\n{text}", pytrace=False)


@pytest.hookimpl(trylast=True)  # after the fixtures' own teardown (also when -x stops early)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = processes.wait_gone(processes.ours(), LEAK_GRACE)
    if left:
        text = processes.describe(left)
        processes.kill_all(left)
        sys.stderr.write(f"\nERROR: processes of this test run outlived it (now killed):\n{text}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
