"""`katapool engine build`: bad input, the source download, and the Eigen engine it builds from
the shared KataGo tarball (compiled once per tarball, cached outside the checkout: conftest)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from conftest import BUILD_TIMEOUT, G170, EigenBuild, Katapool, _env, source_tarball

pytestmark = pytest.mark.engine
# Any test may be the first to ask for the Eigen engine, and so wait for its build.
built = pytest.mark.timeout(BUILD_TIMEOUT + 600)
QUERY = {"id": "q", "moves": [["B", "Q16"], ["W", "D4"]], "rules": "chinese", "komi": 7.5,
         "boardXSize": 19, "boardYSize": 19, "maxVisits": 8}


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, "expected failure"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {proc.stderr!r}"
    assert lines[0].startswith("error: ")
    return lines[0]


def warnings_in(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "warning" in ln.lower() or "Unused key" in ln]


@pytest.fixture
def private_kp(tmp_path: Path) -> Katapool:
    """Empty data and download directories of its own (nothing cached from other tests)."""
    return Katapool(_env(tmp_path / "data", tmp_path / "cache"), tmp_path / "data")


def nothing_left(kp: Katapool) -> None:
    assert kp.manifest() == {}
    engines = kp.data_dir / "engines"
    assert not engines.exists() or list(engines.iterdir()) == []
    builds = Path(kp.env["KATAPOOL_CACHE_DIR"]) / "builds"
    assert not builds.exists() or list(builds.iterdir()) == []


# --- bad input: one clear line, before anything is compiled ---------------------------------

def test_unknown_backend(private_kp: Katapool) -> None:
    line = one_line_error(private_kp.run("engine", "build", "--backend", "vulkan"))
    assert "unknown backend 'vulkan'" in line and "eigen, opencl, cuda, tensorrt" in line
    line = one_line_error(private_kp.run("engine", "build", "--backend", "metal"))
    assert "does not build the Metal backend" in line


def test_missing_compiler_is_named_with_its_package(private_kp: Katapool, tmp_path: Path) -> None:
    """PATH with CMake and make but no C++ compiler."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cmake", "make"):
        found = shutil.which(tool)
        assert found, f"{tool} is a test prerequisite (bin/bootstrap installs it)"
        (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "CXX": ""}
    line = one_line_error(private_kp.run("engine", "build", "--source", str(tmp_path), env=env))
    assert "missing: a C++ compiler (" in line and "apt-get install build-essential)" in line
    assert "cmake" not in line.split("missing:")[1].split("(")[0]
    nothing_left(private_kp)


def test_missing_headers_are_named_with_their_packages(tmp_path: Path) -> None:
    from katapool.engine.backend import Backend
    from katapool.engine.build_prereqs import missing_prereqs, prereq_message

    assert missing_prereqs(Backend.EIGEN) == [], "this machine has what an Eigen build needs"
    missing = missing_prereqs(Backend.EIGEN, include_dirs=[tmp_path])  # no headers at all
    assert [m.packages for m in missing] == [("zlib1g-dev",), ("libzip-dev",), ("libeigen3-dev",)]
    message = prereq_message(Backend.EIGEN, missing)
    assert "Eigen 3 headers (" in message and "apt-get install libeigen3-dev)" in message
    assert "libzip headers (" in message and "apt-get install libzip-dev)" in message
    assert message.endswith("apt-get install -y zlib1g-dev libzip-dev libeigen3-dev")
    opencl = missing_prereqs(Backend.OPENCL, include_dirs=[tmp_path])
    assert ("ocl-icd-opencl-dev",) in [m.packages for m in opencl]
    assert ("libeigen3-dev",) not in [m.packages for m in opencl]


def test_avx2_choice() -> None:
    from katapool.engine.backend import Backend
    from katapool.engine.build import want_avx2
    from katapool.errors import InstallError

    assert want_avx2("auto", Backend.EIGEN, {"avx2", "fma", "sse4_2"}) is True
    assert want_avx2("auto", Backend.EIGEN, {"sse4_2"}) is False  # an older x86, an ARM
    assert want_avx2("off", Backend.EIGEN, {"avx2", "fma"}) is False
    assert want_avx2("auto", Backend.OPENCL, {"avx2", "fma"}) is False  # Eigen's option only
    with pytest.raises(InstallError, match="lacks AVX2"):
        want_avx2("on", Backend.EIGEN, {"neon"})


def test_not_a_katago_tree(private_kp: Katapool, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "cpp").mkdir(parents=True)
    (other / "cpp" / "CMakeLists.txt").write_text("project(leela)\n")
    line = one_line_error(private_kp.run("engine", "build", "--source", str(other)))
    assert "is not a KataGo source tree" in line and "project(katago)" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is not a KataGo source tree" in one_line_error(
        private_kp.run("engine", "build", "--source", str(empty)))
    junk = tmp_path / "KataGo.tar.gz"
    junk.write_bytes(b"not a tarball")
    assert "is not a tar archive" in one_line_error(
        private_kp.run("engine", "build", "--source", str(junk)))
    line = one_line_error(private_kp.run("engine", "build", "--source", str(tmp_path / "nope")))
    assert "no such file or directory" in line
    nothing_left(private_kp)


def test_bad_name_and_jobs(private_kp: Katapool) -> None:
    src = str(source_tarball())
    line = one_line_error(private_kp.run("engine", "build", "--source", src, "--name", "../x"))
    assert "--name '../x'" in line
    assert "--jobs must be at least 1" in one_line_error(
        private_kp.run("engine", "build", "--source", src, "--jobs", "0"))


# --- the first compiler error of a failed build -----------------------------------------------

def test_first_error_is_found_in_compiler_output() -> None:
    from katapool.engine.build_log import first_error, percent_of

    lines = ["[  1%] Building CXX object CMakeFiles/katago.dir/core/global.cpp.o",
             "/src/cpp/core/global.cpp: In function 'void f()':",
             "/src/cpp/core/global.cpp:3:22: error: expected primary-expression before ';' token",
             "    3 | int katapool_broken = ;", "      |                      ^",
             "/src/cpp/core/global.cpp:9:1: error: 'x' was not declared in this scope",
             "make[2]: *** [CMakeFiles/katago.dir/build.make:76: ...] Error 1"]
    assert first_error(lines) == lines[2:5]
    link = ["/usr/bin/ld: search.cpp.o: in function `Search::run()':",
            "search.cpp:(.text+0x2a): undefined reference to `Foo::bar()'",
            "collect2: error: ld returned 1 exit status", "make[2]: *** [katago] Error 1"]
    assert first_error(link) == link[:3]
    assert first_error(["CMake Error at CMakeLists.txt:502 (find_package):", "  Could not find Eigen3",
                        "-- Configuring incomplete, errors occurred!"])[:2] == [
        "CMake Error at CMakeLists.txt:502 (find_package):", "  Could not find Eigen3"]
    assert first_error(["all fine", "[100%] Built target katago"]) == []
    assert percent_of("[ 42%] Building CXX object x.o") == 42
    assert percent_of("[13/130] Building CXX object x.o") == 10
    assert percent_of("-- Configuring done") is None


def test_failed_build_shows_the_first_compiler_error(private_kp: Katapool, tmp_path: Path) -> None:
    """A copy of the real tree with the first file make compiles broken: one job stops at its
    error after a configure and one file, not a whole build."""
    with tarfile.open(source_tarball()) as tar:
        tar.extractall(tmp_path, filter="data")
    [root] = [p for p in tmp_path.iterdir() if p.is_dir()]
    first = root / "cpp" / "core" / "global.cpp"
    first.write_text("int katapool_broken = ;\n" + first.read_text())
    proc = private_kp.run("engine", "build", "--source", str(root), "--jobs", "1", timeout=900)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) < 30, proc.stderr  # not the compiler's whole output
    shown = lines[lines.index("first error of the compilation:") + 1:]
    assert "global.cpp:1:" in shown[0] and "error: expected primary-expression" in shown[0]
    assert "int katapool_broken = ;" in "\n".join(shown)
    assert lines[-1].startswith("error: KataGo's compilation failed: ")
    log = Path(lines[-1].split("(full log: ")[1].rstrip(")"))
    assert log.is_file() and "katapool_broken" in log.read_text()
    nothing_left(private_kp)


# --- the source download (GitHub's tag tarballs), from a local server --------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def source_server(tmp_path: Path) -> Iterator[str]:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(source_tarball(), site / "v1.17.2.tar.gz")
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_checks_the_pinned_sha256(private_kp: Katapool, source_server: str) -> None:
    from katapool.engine.build_source import PINNED_SOURCES

    proc = private_kp.run("engine", "build", "--version", "1.17.2", "--base-url", source_server,
                          "--download-only", check=True)
    got = Path(proc.stdout.strip())
    assert got.is_file() and hashlib.sha256(got.read_bytes()).hexdigest() == PINNED_SOURCES["1.17.2"]
    assert PINNED_SOURCES["1.17.2"] == hashlib.sha256(source_tarball().read_bytes()).hexdigest()


def test_download_with_a_wrong_sha256_is_refused(private_kp: Katapool, source_server: str) -> None:
    line = one_line_error(private_kp.run(
        "engine", "build", "--version", "1.17.2", "--base-url", source_server,
        "--sha256", "0" * 64, "--download-only"))
    assert "sha256 mismatch" in line
    downloads = Path(private_kp.env["KATAPOOL_CACHE_DIR"]) / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []
    line = one_line_error(private_kp.run("engine", "build", "--version", "1.99.0",
                                         "--base-url", source_server))
    assert "not pinned" in line and "--sha256" in line
    line = one_line_error(private_kp.run("engine", "build", "--version", "1.99.0", "--sha256",
                                         "0" * 64, "--base-url", source_server))
    assert "HTTP 404" in line
    nothing_left(private_kp)


# --- the Eigen engine built from the shared tarball -------------------------------------------

@built
def test_build_is_recorded(eigen_build: EigenBuild) -> None:
    [record] = cast(list[dict[str, Any]], eigen_build.builder.manifest()["engines"])
    assert record["name"] == "eigen-test" and record["source"] == "build"
    assert record["backend"] == "eigen" and record["version"] == "1.17.2"
    assert record["sha256"] == hashlib.sha256(eigen_build.tarball.read_bytes()).hexdigest()
    assert "-DUSE_BACKEND=EIGEN" in record["build_options"]
    assert "-DNO_GIT_REVISION=1" in record["build_options"]
    logs = list((eigen_build.builder.data_dir / "logs").glob("engine-build-*-eigen.log"))
    assert logs and any("Built target katago" in log.read_text() for log in logs)
    info = json.loads(eigen_build.builder.run("engine", "info", "--json", check=True).stdout)
    assert info["backend"] == "Eigen" and info["version"] == "1.17.2"


@built
def test_one_position_check(eigen_katago: Path, isolated_env: Path, tmp_path: Path) -> None:
    """What `engine build` runs before installing: one position with a network, or KataGo's
    built-in tiny network; a network the engine cannot load fails it."""
    from katapool.engine.build import check_one_position
    from katapool.engine.probe import probe_version
    from katapool.errors import InstallError

    info = probe_version(eigen_katago)
    assert check_one_position(info, G170, tmp_path) == G170.name
    assert check_one_position(info, None, tmp_path) == "KataGo's built-in tiny network"
    assert not (Path.cwd() / "gtp_logs").exists()  # the tiny test logs into its own directory
    bad = tmp_path / "bad.bin.gz"
    bad.write_bytes(b"\x1f\x8b not a network")
    with pytest.raises(InstallError, match="failed its one-position check with bad.bin.gz"):
        check_one_position(info, bad, tmp_path)


@built
def test_analysis_answers_without_warnings(kp: Katapool, eigen_katago: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "katapool", "analysis", "--katago",
                           str(eigen_katago), "-model", str(G170)],
                          input=json.dumps(QUERY) + "\n", capture_output=True, text=True,
                          env=kp.env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [answer] = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert answer["id"] == "q" and answer["moveInfos"]
    assert warnings_in(proc.stderr) == [], proc.stderr


@built
def test_gtp_genmove(kp: Katapool, eigen_katago: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "katapool", "gtp", "--katago", str(eigen_katago),
                           "--model", str(G170)], input="version\ngenmove b\nquit\n",
                          capture_output=True, text=True, env=kp.env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    replies = [ln for ln in proc.stdout.splitlines() if ln.startswith("=")]
    assert replies[0].startswith("= 1.17.2")
    assert len(replies) == 3 and len(replies[1].split()) == 2, proc.stdout  # "= Q16"


@built
@pytest.mark.parametrize("mode", ["analysis", "gtp"])
def test_rpi_config_loads_without_warnings(kp: Katapool, eigen_katago: Path, tmp_path: Path,
                                           mode: str) -> None:
    logs, cfg = tmp_path / "logs", tmp_path / f"{mode}.cfg"
    kp.run("config", "generate", "--katago", str(eigen_katago), "--mode", mode, "--preset", "rpi",
           "--model", str(G170), "--set", f"logDir={logs}", "--set", "maxVisits=8",
           "-o", str(cfg), check=True)
    text = cfg.read_text()
    assert "numEigenThreadsPerModel" in text and "opencl" not in text.lower()
    feed = json.dumps(QUERY) + "\n" if mode == "analysis" else "genmove b\nquit\n"
    proc = subprocess.run([str(eigen_katago), mode, "-config", str(cfg), "-model", str(G170)],
                          input=feed, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log_text = "".join(p.read_text() for p in logs.iterdir())
    assert "Eigen" in log_text
    assert warnings_in(proc.stderr) == [] and warnings_in(log_text) == []


@built
def test_engine_list_and_devices_show_both_engines(both_kp: Katapool) -> None:
    listing = both_kp.run("engine", "list", check=True).stdout
    assert "katrain-opencl" in listing and "OpenCL" in listing
    assert "eigen" in listing and "Eigen" in listing
    report = json.loads(both_kp.run("devices", "--json", "--model", str(G170),
                                    env={"PATH": "/usr/bin:/bin"}, check=True).stdout)
    engines = {e["name"]: e for e in report["engines"]}
    assert engines["eigen"]["devices"] == ["cpu"] and engines["eigen"]["default"] is True
    assert engines["katrain-opencl"]["devices"] == ["opencl:0"]
    assert [d["spec"] for d in report["opencl"]] == ["opencl:0"]  # listed by the OpenCL one


@built
def test_bench_measures_every_installed_engine(both_kp: Katapool) -> None:
    proc = both_kp.run("bench", "--model", str(G170), "--batch", "2", "--seconds", "0.5",
                       "--skip", "onnx,tflite,tensorrt", "--json", "--no-chart", check=True,
                       timeout=600)
    rows = {r["method"]: r for r in json.loads(proc.stdout)["rows"] if r["precision"] == "fp32"}
    assert set(rows) == {"KataGo Eigen", "KataGo OpenCL"}, rows
    assert all(r["evals_per_second"] > 0 for r in rows.values()), rows


def test_install_hint_on_a_cpu_only_machine(isolated_env: Path, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """The hint's decision: only for an OpenCL engine that reaches nothing but the CPU, and
    only until an Eigen engine is installed; the release where KataGo publishes one."""
    from katapool.devices import discover, nvidia
    from katapool.devices.model import Device, DeviceKind
    from katapool.engine import advice
    from katapool.engine.backend import Backend
    from katapool.engine.manifest import EngineRecord, Manifest, save_manifest

    model = tmp_path / "net.bin.gz"
    model.write_bytes(b"x")
    pocl = Device(DeviceKind.OPENCL, 0, "cpu-haswell-AMD EPYC", is_cpu_like=True)
    monkeypatch.setattr(nvidia, "list_nvidia_gpus", lambda: ([], "no nvidia-smi"))
    monkeypatch.setattr(discover, "opencl_devices", lambda katago, model: ([pocl], None))

    def record(name: str, backend: Backend) -> EngineRecord:
        return EngineRecord(name=name, version="1.18.1", backend=backend, path=tmp_path / name,
                            sha256="0", source="path", managed=False, model=model)

    opencl = record("katrain", Backend.OPENCL)
    hint = advice.cpu_only_hint(opencl)
    assert hint is not None and "Eigen backend is much faster (13x faster for a small" in hint
    assert "--from release --version 1.17.2 --backend eigen" in hint
    assert "katapool engine build --backend eigen" in hint
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    hint = advice.cpu_only_hint(opencl)
    assert hint is not None and "--from release" not in hint and "engine build" in hint
    monkeypatch.setattr(discover, "opencl_devices",
                        lambda katago, model: ([Device(DeviceKind.OPENCL, 0, "gfx1100")], None))
    assert advice.cpu_only_hint(opencl) is None  # an AMD GPU through OpenCL
    monkeypatch.setattr(discover, "opencl_devices", lambda katago, model: ([pocl], None))
    save_manifest(Manifest(engines=[opencl, record("eigen", Backend.EIGEN)]))
    assert advice.cpu_only_hint(opencl) is None  # already has one
    assert advice.cpu_only_hint(record("eigen", Backend.EIGEN)) is None


def test_fastest_engine_without_compiling(isolated_env: Path, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """bin/demo's choice: KaTrain's always (PyPI, the network); on a CPU-only x86-64 machine
    KataGo's Eigen release too where github.com answers, else KaTrain's with the reason."""
    from rich.console import Console

    from katapool.engine import fastest, install
    from katapool.engine.backend import Backend
    from katapool.engine.manifest import EngineRecord

    def record(name: str, backend: Backend) -> EngineRecord:
        return EngineRecord(name=name, version="1.17.2", backend=backend, path=tmp_path / name,
                            sha256="0", source="release", managed=True)

    katrain, eigen = record("katrain", Backend.OPENCL), record("eigen", Backend.EIGEN)
    monkeypatch.setattr(install, "install_from_katrain", lambda console: katrain)
    asked: list[str] = []

    def release(console: Console, version: str, backend: Backend, asset: str) -> EngineRecord:
        asked.append(asset)
        return eigen

    monkeypatch.setattr(install, "install_from_release", release)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(fastest, "on_cpu_only", lambda r: True)
    console = Console(stderr=True)

    monkeypatch.setattr(fastest, "release_reachable", lambda v, asset: None)
    choice = fastest.install_fastest(console)
    assert choice.record is eigen and "Eigen release computes on the CPU much faster" in choice.why
    assert asked == [fastest.eigen_asset("1.17.2")]
    assert asked[0] in ("katago-v1.17.2-eigen-linux-x64.zip", "katago-v1.17.2-eigenavx2-linux-x64.zip")

    monkeypatch.setattr(fastest, "release_reachable",
                        lambda v, asset: "github.com is out of reach (Name or service not known)")
    choice = fastest.install_fastest(console)
    assert choice.record is katrain and "github.com is out of reach" in choice.why
    assert "engine build --backend eigen" in choice.why

    monkeypatch.setattr(fastest, "on_cpu_only", lambda r: False)
    choice = fastest.install_fastest(console)
    assert choice.record is katrain and "reaches a GPU" in choice.why


def test_fastest_install_says_which_and_why(fresh_kp: Katapool) -> None:
    """The real thing on this machine (no GPU): KataGo's Eigen release where github.com
    answers, else KaTrain's engine, with the reason."""
    proc = fresh_kp.run("engine", "install", "--fastest", check=True, timeout=900)
    said = proc.stderr.replace("\n", " ")
    if "Eigen release computes on the CPU much faster" in said:
        assert "installed katago-1.17.2-eigen" in proc.stdout
    else:
        assert "installed katrain-1.20.0" in proc.stdout
        assert "engine: katrain-1.20.0, because no GPU, but KataGo's Eigen release" in said
        assert "engine build --backend eigen" in said
