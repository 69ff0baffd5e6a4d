"""`katapool engine install | list | info | remove` against the real KaTrain KataGo."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CACHE, G170, Katapool

pytestmark = pytest.mark.engine

WHEEL = CACHE / "test-downloads" / "downloads" / "katrain-1.20.0-py3-none-any.whl"


def one_line_error(proc: object) -> str:
    stderr = proc.stderr.strip()  # type: ignore[attr-defined]
    assert proc.returncode != 0, "expected failure"  # type: ignore[attr-defined]
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one error line, got: {stderr!r}"
    assert lines[0].startswith("error: ")
    return lines[0]


def no_leftovers(data_dir: Path) -> None:
    engines = data_dir / "engines"
    if engines.exists():
        leftovers = [p.name for p in engines.iterdir() if p.name.startswith((".stage", ".old"))]
        assert leftovers == []


def test_info_reports_version_and_backend(kp: Katapool) -> None:
    proc = kp.run("engine", "info", "--json", "--model", str(G170), check=True)
    info = json.loads(proc.stdout)
    assert info["version"] == "1.18.1"
    assert info["backend"] == "OpenCL"
    assert info["origin"] == "manifest"
    assert info["opencl_devices"], "PoCL should expose the CPU as OpenCL device 0"


def test_manifest_records_install(kp: Katapool, katago: Path) -> None:
    manifest = kp.manifest()
    [record] = manifest["engines"]  # type: ignore[misc]
    assert record["version"] == "1.18.1" and record["backend"] == "opencl"
    assert record["source"] == "katrain"
    assert record["sha256"] == hashlib.sha256(WHEEL.read_bytes()).hexdigest()
    assert Path(record["model"]).name == "b10c384h6nbttflrs.bin.gz"
    assert os.access(katago, os.X_OK)
    listing = kp.run("engine", "list", check=True).stdout
    assert "katrain-1.20.0" in listing and "OpenCL" in listing


def test_corrupt_wheel_is_rejected_and_nothing_left(fresh_kp: Katapool, tmp_path: Path) -> None:
    bad = tmp_path / "katrain-1.20.0-py3-none-any.whl"
    data = bytearray(WHEEL.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    line = one_line_error(fresh_kp.run("engine", "install", "--wheel", str(bad)))
    assert "sha256 mismatch" in line
    assert fresh_kp.manifest() == {}
    no_leftovers(fresh_kp.data_dir)
    engines = fresh_kp.data_dir / "engines"
    assert not engines.exists() or [p for p in engines.iterdir()] == []


def test_register_missing_binary(fresh_kp: Katapool, tmp_path: Path) -> None:
    line = one_line_error(fresh_kp.run("engine", "install", "--path", str(tmp_path / "nope")))
    assert "does not exist" in line
    assert fresh_kp.manifest() == {}


def test_register_non_executable(fresh_kp: Katapool, tmp_path: Path) -> None:
    f = tmp_path / "katago"
    f.write_text("not a program")
    f.chmod(0o644)
    line = one_line_error(fresh_kp.run("engine", "install", "--path", str(f)))
    assert "not executable" in line
    assert fresh_kp.manifest() == {}


def test_register_existing_binary_and_remove(fresh_kp: Katapool, katago: Path) -> None:
    proc = fresh_kp.run("engine", "install", "--path", str(katago), "--name", "mine", check=True)
    assert "KataGo 1.18.1 (OpenCL)" in proc.stdout
    [record] = fresh_kp.manifest()["engines"]  # type: ignore[misc]
    assert record["managed"] is False and record["path"] == str(katago)
    fresh_kp.run("engine", "remove", "mine", check=True)
    assert fresh_kp.manifest()["engines"] == []
    assert katago.exists(), "removing a registered engine must not delete its binary"


def test_missing_library_is_diagnosed(fresh_kp: Katapool, katago: Path, tmp_path: Path) -> None:
    """A copy of the real engine whose dynamic section asks for a library that exists nowhere
    (its libzip entry renamed in place, same length): the loader refuses it on any machine,
    whatever that machine has installed."""
    inner = katago.parent / "usr" / "bin" / "katago"
    image = inner.read_bytes()
    wanted, absent = b"libzip.so.4\0", b"libkp0.so.9\0"
    assert image.count(wanted) == 1, "the engine's dynamic section no longer names libzip.so.4"
    broken = tmp_path / "katago"
    broken.write_bytes(image.replace(wanted, absent))
    broken.chmod(0o755)
    line = one_line_error(fresh_kp.run("engine", "info", "--katago", str(broken)))
    assert "missing shared library libkp0.so.9" in line


def test_no_opencl_platform_is_diagnosed(kp: Katapool, tmp_path: Path) -> None:
    empty = tmp_path / "icd"
    empty.mkdir()
    proc = kp.run("engine", "info", "--json", "--model", str(G170),
                  env={"OCL_ICD_VENDORS": str(empty)}, check=True)
    info = json.loads(proc.stdout)
    assert "install an OpenCL driver, e.g. pocl-opencl-icd" in info["opencl_problem"]


def test_katago_flag_beats_everything(kp: Katapool, tmp_path: Path) -> None:
    line = one_line_error(kp.run("engine", "info", "--katago", str(tmp_path / "absent")))
    assert "no such file" in line
    line = one_line_error(kp.run("engine", "info", env={"KATAPOOL_KATAGO": str(tmp_path / "x")}))
    assert "KATAPOOL_KATAGO" in line


def test_no_engine_anywhere(fresh_kp: Katapool) -> None:
    line = one_line_error(fresh_kp.run("engine", "info", env={"PATH": "/usr/bin:/bin"}))
    assert "katapool engine install" in line


# --- official release zips, served by a local HTTP server -----------------------------------

def _release_zip(katago: Path) -> bytes:
    """A KataGo Linux release laid out as a zip (the real engine, with its libraries)."""
    root = katago.parent  # squashfs-root: AppRun launcher, usr/bin/katago, usr/lib/*.so
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        def add(src: Path, name: str) -> None:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | (src.stat().st_mode & 0o777)) << 16
            zf.writestr(info, src.read_bytes())
        add(root / "AppRun", "katago-v1.18.1-opencl-linux-x64/katago")
        add(root / "usr" / "bin" / "katago", "katago-v1.18.1-opencl-linux-x64/usr/bin/katago")
        for lib in (root / "usr" / "lib").iterdir():
            add(lib, f"katago-v1.18.1-opencl-linux-x64/usr/lib/{lib.name}")
    return buf.getvalue()


@pytest.fixture
def release_server(tmp_path: Path, katago: Path) -> Iterator[tuple[str, str]]:
    site = tmp_path / "site" / "v1.18.1"
    site.mkdir(parents=True)
    payload = _release_zip(katago)
    (site / "katago-v1.18.1-opencl-linux-x64.zip").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", hashlib.sha256(payload).hexdigest()
    finally:
        server.shutdown()
        server.server_close()


def test_release_install_checks_sha256(fresh_kp: Katapool, release_server: tuple[str, str]) -> None:
    url, digest = release_server
    proc = fresh_kp.run("engine", "install", "--from", "release", "--version", "1.18.1",
                        "--backend", "opencl", "--base-url", url, "--sha256", digest, check=True)
    assert "KataGo 1.18.1 (OpenCL)" in proc.stdout
    [record] = fresh_kp.manifest()["engines"]  # type: ignore[misc]
    assert record["sha256"] == digest and record["source"] == "release"
    info = json.loads(fresh_kp.run("engine", "info", "--json", "--model", str(G170),
                                   check=True).stdout)
    assert info["version"] == "1.18.1" and info["backend"] == "OpenCL"
    fresh_kp.run("engine", "remove", record["name"], check=True)
    assert not Path(record["directory"]).exists()


def test_release_sha256_mismatch(fresh_kp: Katapool, release_server: tuple[str, str]) -> None:
    url, _ = release_server
    line = one_line_error(fresh_kp.run(
        "engine", "install", "--from", "release", "--version", "1.18.1", "--backend", "opencl",
        "--base-url", url, "--sha256", "0" * 64))
    assert "sha256 mismatch" in line
    assert fresh_kp.manifest() == {}
    no_leftovers(fresh_kp.data_dir)


def test_release_not_found(fresh_kp: Katapool, release_server: tuple[str, str]) -> None:
    url, _ = release_server
    line = one_line_error(fresh_kp.run(
        "engine", "install", "--from", "release", "--version", "9.9.9", "--backend", "eigen",
        "--base-url", url))
    assert "HTTP 404" in line
    no_leftovers(fresh_kp.data_dir)


def test_release_needs_version_and_backend(fresh_kp: Katapool) -> None:
    line = one_line_error(fresh_kp.run("engine", "install", "--from", "release"))
    assert "--version" in line
    line = one_line_error(fresh_kp.run("engine", "install", "--from", "release", "--version",
                                       "1.16.4", "--backend", "vulkan"))
    assert "unknown backend 'vulkan'" in line


def test_release_refuses_machines_katago_has_no_release_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from katapool.engine import install
    from katapool.engine.backend import Backend
    from katapool.errors import InstallError

    assert install.release_asset("1.18.1", Backend.parse("eigen")).endswith("-linux-x64.zip")
    monkeypatch.setattr(install.platform, "machine", lambda: "aarch64")
    with pytest.raises(InstallError, match="x86-64 only, not aarch64.*--path"):
        install.release_asset("1.18.1", Backend.parse("eigen"))
    with pytest.raises(InstallError, match="KaTrain's wheel .* x86-64 only, not aarch64"):
        install.install_from_katrain(Console(stderr=True), wheel=WHEEL)


def test_reinstall_replaces_cleanly(kp: Katapool, tmp_path: Path) -> None:
    # On a copy of the session's installed data: its engine is in use by tests beside this one.
    data = tmp_path / "data"
    shutil.copytree(kp.data_dir, data, symlinks=True,
                    ignore=shutil.ignore_patterns("logs", "run", "katago-home"))
    kp = Katapool({**kp.env, "KATAPOOL_DATA_DIR": str(data)}, data)
    before = kp.manifest()
    proc = kp.run("engine", "install", check=True)
    # No GPU here: OpenCL runs on PoCL, and the install says how to get the faster Eigen engine.
    assert "hint: no GPU here" in proc.stderr and "engine build --backend eigen" in proc.stderr
    after = kp.manifest()
    assert [e["name"] for e in after["engines"]] == [e["name"] for e in before["engines"]]  # type: ignore[index]
    no_leftovers(kp.data_dir)
    # Readable by other users (a root install serving a service user), not mkdtemp's 0700.
    assert stat.S_IMODE((kp.data_dir / "engines" / "katrain-1.20.0").stat().st_mode) == 0o755
    assert shutil.which("true")  # sanity: PATH intact for later tests
