"""Engine provisioning and preparation when something is broken: a damaged or foreign
manifest, an installed engine whose binary is gone, an install cut short or run twice at once,
a tuner interrupted, a tuning file cut short, a file that is no network.

Fast by design: in-process calls against a private data directory, and FAKE engines (named as
such, in tests/fakes) where a fault must be injected; no real KataGo runs here.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import G170, ROOT, Katapool

FAKE_EIGEN = ROOT / "tests" / "fakes" / "fake_quick_katago"
FAKE_TUNER = ROOT / "tests" / "fakes" / "fake_opencl_tuner_katago"


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from katapool.cli.main import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return " ".join(lines[0].split())


def _record(name: str, path: Path, source: str = "path") -> dict[str, object]:
    return {"name": name, "version": "1.18.1", "backend": "eigen", "path": str(path),
            "sha256": "0" * 64, "source": source, "managed": source != "path"}


def _write_manifest(data_dir: Path, content: str | bytes) -> Path:
    path = data_dir / "engines" / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def _doctor_check(name: str) -> object:
    from katapool.doctor import run_checks

    return next(c for c in run_checks() if c.name == name)


# --- the engine manifest ----------------------------------------------------------------------

@pytest.mark.parametrize(("content", "problem"), [
    ('{"default": "x", "engi', "Invalid JSON: EOF while parsing"),  # cut short
    ('{"engines": {}}', "engines: Input should be a valid array"),  # wrong type
    ('{"engines": [{"name": 3}]}', "engines.0.name: Input should be a valid string"),
    (b"\xff\xfe\x00garbage", "Invalid JSON"),  # not text at all: once a traceback
])
def test_a_damaged_manifest_is_one_line_naming_the_problem_and_the_fix(
        isolated_env: Path, capsys: pytest.CaptureFixture[str], content: str | bytes,
        problem: str) -> None:
    path = _write_manifest(isolated_env / "data", content)
    code, _, err = _cli(["engine", "list"], capsys)
    line = _one_error_line(err)
    assert code == 1 and f"engine manifest {path} is damaged" in line and problem in line, line
    fix = f"mv {path} {path}.damaged && katapool engine install"
    assert fix in line
    check = _doctor_check("engine")
    assert check.status == "problem" and check.fix == fix  # type: ignore[attr-defined]


def test_the_manifest_is_readable_by_other_users(isolated_env: Path) -> None:
    """A service account runs the engines an administrator installed (the folders are
    world-readable): the manifest once kept mkstemp's 0600."""
    from katapool.engine.manifest import Manifest, save_manifest
    from katapool.paths import manifest_path

    save_manifest(Manifest())
    assert stat.S_IMODE(manifest_path().stat().st_mode) == 0o644


# --- an installed engine whose binary is gone ---------------------------------------------------

def test_a_default_engine_without_its_binary_names_both_ways_out(
        isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = isolated_env / "moved-away" / "katago"
    _write_manifest(isolated_env / "data", json.dumps({
        "default": "gone", "engines": [_record("other", FAKE_EIGEN), _record("gone", gone)]}))
    code, _, err = _cli(["engine", "info"], capsys)
    line = _one_error_line(err)
    assert code == 1 and f"installed engine 'gone' is missing its binary {gone}" in line
    # Not `katapool engine install`, which installs another engine and leaves this one broken.
    assert "`katapool engine install --path BINARY --name gone`" in line
    assert "`katapool engine remove gone`; then other is the default" in line
    check = _doctor_check("engine")
    assert check.fix == "katapool engine remove gone"  # type: ignore[attr-defined]

    code, out, _ = _cli(["engine", "list"], capsys)
    assert code == 0 and "(missing)" in out and "gone: its binary is gone" in out
    code, out, _ = _cli(["devices", "--json"], capsys)
    engines = {e["name"]: e for e in json.loads(out)["engines"]}
    # The broken default no longer hides the engine that works.
    assert engines["other"]["version"] == "1.18.1" and engines["other"]["devices"] == ["cpu"]
    assert engines["gone"]["version"] is None and engines["gone"]["default"] is True

    _cli(["engine", "remove", "gone"], capsys)
    code, out, _ = _cli(["engine", "info", "--json"], capsys)
    assert code == 0 and json.loads(out)["path"] == str(FAKE_EIGEN)


def test_a_moved_data_directory_keeps_its_installed_engines(
        isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole data directory moved (a home restored elsewhere, a cache unpacked at another
    path): the engines installed in it are found where they now lie, not called missing."""
    before = isolated_env / "old-home" / "engines" / "fake-1"
    (before / "bin").mkdir(parents=True)
    (before / "bin" / "katago").write_bytes(FAKE_EIGEN.read_bytes())
    (before / "bin" / "katago").chmod(0o755)
    (before / "net.bin.gz").write_bytes(b"not read here")
    record = {**_record("fake-1", before / "bin" / "katago", source="release"),
              "directory": str(before), "model": str(before / "net.bin.gz")}
    _write_manifest(isolated_env / "old-home", json.dumps({"default": "fake-1",
                                                           "engines": [record]}))
    data = isolated_env / "data"
    data.mkdir(exist_ok=True)
    (isolated_env / "old-home" / "engines").rename(data / "engines")

    code, out, err = _cli(["engine", "info", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["path"] == str(data / "engines" / "fake-1" / "bin" / "katago")
    from katapool.engine.manifest import load_manifest

    [moved] = load_manifest().engines
    assert moved.directory == data / "engines" / "fake-1"
    assert moved.model == data / "engines" / "fake-1" / "net.bin.gz"


# --- installs cut short, or run at once -------------------------------------------------------

def test_what_a_killed_install_left_is_removed_by_the_next_one(isolated_env: Path) -> None:
    """A stage (an install killed while unpacking: hundreds of MB) and a set-aside old
    version (killed while swapping) were once left in engines/ for good."""
    from katapool.engine.install import install_from_path
    from katapool.engine.manifest import load_manifest

    engines = isolated_env / "data" / "engines"
    for leftover in (".stage-katrain-1.20.0-x1y2z3", ".old-katrain-1.20.0"):
        (engines / leftover / "squashfs-root").mkdir(parents=True)
        (engines / leftover / "squashfs-root" / "AppRun").write_text("half")
    install_from_path(FAKE_EIGEN, "fake")
    assert sorted(p.name for p in engines.iterdir()) == [".lock", "manifest.json"]
    assert load_manifest().default == "fake"


def test_a_second_install_waits_for_the_first(isolated_env: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Two installs at once once swapped the same folder and could drop each other's
    manifest record; the second now waits, saying so."""
    from katapool.engine.install import LOCK_NAME, install_from_path
    from katapool.engine.manifest import load_manifest

    engines = isolated_env / "data" / "engines"
    engines.mkdir(parents=True)
    with open(engines / LOCK_NAME, "a") as held:  # the first install, in its critical part
        fcntl.flock(held, fcntl.LOCK_EX)
        second = threading.Thread(target=install_from_path, args=(FAKE_EIGEN, "second"))
        second.start()
        said = ""
        deadline = time.monotonic() + 60  # hang guard; it says so at once
        while "waiting for another engine install" not in said and second.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.05)
            said += capsys.readouterr().err
        assert "waiting for another engine install" in said
        assert second.is_alive() and load_manifest().get("second") is None
    second.join(60)
    assert not second.is_alive() and load_manifest().get("second") is not None


# --- OpenCL tuning interrupted, or cut short ------------------------------------------------------

def _tuner_env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KATAPOOL_")}
    return {**env, "KATAPOOL_DATA_DIR": str(data / "data"),
            "KATAPOOL_CACHE_DIR": str(data / "cache"), **extra}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(("argv", "signum", "scratch_flag"), [
    (["prepare"], signal.SIGTERM, "-output"),
    (["prepare"], signal.SIGINT, "-output"),
    (["analysis", "--measure"], signal.SIGTERM, "-config"),
])
def test_an_interrupted_prepare_stops_its_tuner(tmp_path: Path, argv: list[str], signum: int,
                                                scratch_flag: str) -> None:
    """A SIGTERM (a service stopped, a container's end) or an interrupt sent to katapool alone
    once left KataGo's tuner computing for minutes with no one to read it; the measuring
    tools of `analysis --measure` (measured before the pool starts) were stopped, but their
    scratch folder was left behind."""
    pidfile = tmp_path / "tuner.pid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "katapool", *argv, "--katago", str(FAKE_TUNER),
         "--model", str(G170)],
        env=_tuner_env(tmp_path, FAKE_TUNER_PIDFILE=str(pidfile), FAKE_MEASURE="hang"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60  # hang guard: the fake tuner starts in a second
        while not pidfile.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pidfile.exists(), proc.stderr.read() if proc.poll() is not None else "no tuner"
        tuner = int(pidfile.read_text())
        tool_argv = psutil.Process(tuner).cmdline()
        scratch = Path(tool_argv[tool_argv.index(scratch_flag) + 1]).parent
        assert scratch.exists()
        proc.send_signal(signum)
        proc.wait(60)
        while not _gone(tuner) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(tuner), f"the tool outlived katapool {argv[0]}"
        assert not scratch.exists(), "the tool's scratch folder was left behind"
        if argv == ["prepare"]:  # nothing half-tuned was recorded: the next prepare tunes again
            assert not (tmp_path / "data" / "tuning" / "index.json").exists()
    finally:
        proc.kill()
        proc.wait()
        if pidfile.exists() and not _gone(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_a_tuning_file_cut_short_is_never_complete(tmp_path: Path) -> None:
    from katapool.engine.tuning import reference_tuning_text, tuning_file_complete

    lines = reference_tuning_text().splitlines(keepends=True)
    for cut in range(1, len(lines) + 1):
        path = tmp_path / f"cut-{cut}.txt"
        path.write_text("".join(lines[:cut]))
        assert tuning_file_complete(path) == (cut == len(lines)), cut


@pytest.mark.parametrize("mode", ["truncated", "complete"])
def test_a_tune_is_recorded_only_when_complete(isolated_env: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """A tuning file cut short (KataGo aborts at start on one) was once recorded as a full
    tune and handed to every engine after."""
    from katapool.engine.tuning import load_index, reference_tuning_text

    monkeypatch.setenv("FAKE_TUNER", mode)
    monkeypatch.setenv("FAKE_TUNER_COMPLETE", reference_tuning_text())
    code, _, err = _cli(["prepare", "--katago", str(FAKE_TUNER), "--model", str(G170)], capsys)
    final = isolated_env / "data" / "tuning" / "fake-opencl-device-katago1.18.1-x19.txt"
    if mode == "truncated":
        line = _one_error_line(err.replace("\r", "\n").splitlines()[-1])
        assert code == 1 and "wrote an incomplete tuning file" in line, err
        assert not final.exists() and load_index().best("fake-opencl-device", "1.18.1") is None
    else:
        assert code == 0 and final.read_text() == reference_tuning_text()
        assert stat.S_IMODE(final.stat().st_mode) == 0o644
        best = load_index().best("fake-opencl-device", "1.18.1")
        assert best is not None and best.kind == "full" and best.file == final


def test_a_damaged_tuning_file_is_not_handed_to_the_engine(
        isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One already recorded (cut short by a full disk while it was copied into place) is
    passed over: the engine starts untuned instead of aborting, and doctor says why."""
    from katapool.config.build import tuning_for
    from katapool.devices import discover_devices
    from katapool.engine.probe import probe_version
    from katapool.engine.tuning import TuningEntry, record_entry

    cut = isolated_env / "data" / "tuning" / "fake-opencl-device-katago1.18.1-x19.txt"
    cut.parent.mkdir(parents=True)
    cut.write_text("VERSION=13\n#canUseFP16Storage\n0\n")
    record_entry(TuningEntry(device_name="fake-opencl-device", engine_version="1.18.1",
                             kind="full", file=cut))
    monkeypatch.setenv("KATAPOOL_KATAGO", str(FAKE_TUNER))
    monkeypatch.setenv("KATAPOOL_MODEL", str(G170))
    info = probe_version(FAKE_TUNER)
    chosen = tuning_for([], discover_devices(FAKE_TUNER, G170, opencl=True), info)
    assert chosen.kind == "reference" and chosen.file != cut
    check = _doctor_check("tuning")
    assert check.status == "problem" and f"tuning file {cut} is cut short" in check.detail  # type: ignore[attr-defined]
    assert check.fix == "katapool prepare"  # type: ignore[attr-defined]


@pytest.mark.parametrize("damage", [b'{"entries": [{"device_na', b"\xff\x00not json",
                                    b'{"entries": 3}'])
def test_a_damaged_tuning_index_keeps_the_complete_tunes_on_disk(
        isolated_env: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, damage: bytes) -> None:
    """An index cut short once lost the record of a whole tune still on disk: the next
    prepare tuned again for minutes. It is rebuilt from the tuning files that are whole; one
    cut short is left out (never handed to the engine)."""
    from katapool.engine.tuning import index_path, load_index, reference_tuning_text

    monkeypatch.setenv("FAKE_TUNER", "complete")
    monkeypatch.setenv("FAKE_TUNER_COMPLETE", reference_tuning_text())
    argv = ["prepare", "--katago", str(FAKE_TUNER), "--model", str(G170)]
    assert _cli(argv, capsys)[0] == 0
    tuned = isolated_env / "data" / "tuning" / "fake-opencl-device-katago1.18.1-x19.txt"
    cut = tuned.with_name("fake-opencl-device-katago1.18.1-x9.txt")
    cut.write_text("VERSION=13\n#canUseFP16Storage\n0\n")
    index_path().write_bytes(damage)
    monkeypatch.setenv("FAKE_TUNER", "truncated")  # a re-tune now fails: it must not run
    code, out, err = _cli(argv, capsys)
    assert code == 0 and "up-to-date" in out, (out, err)
    assert "could not be read; rebuilt it from the 1 complete tuning file(s)" in caplog.text
    best = load_index().best("fake-opencl-device", "1.18.1")
    assert best is not None and best.kind == "full" and best.file == tuned
    assert [e.file for e in load_index().entries] == [tuned]
    assert index_path().with_name("index.json.damaged").read_bytes() == damage


# --- measuring: a file that is no network, a profile gone stale ------------------------------------

def test_measuring_with_a_file_that_is_no_network_says_so(
        isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was once taken for a device fault: 'useFP16 = false: FP16 kernels failed', then
    'benchmarknn failed ... FP16 kernels failed (Error loading ... model file)'. The file is a
    network cut in half: its start passes katapool's own header check, KataGo refuses it."""
    notes = isolated_env / "cut.bin.gz"
    whole = G170.read_bytes()
    notes.write_bytes(whole[:len(whole) // 2])
    code, _, err = _cli(["prepare", "--fast", "--measure", "--mode", "gtp", "--katago",
                         str(FAKE_TUNER), "--model", str(notes)], capsys)
    line = " ".join(err.split())
    assert code == 1 and f"error: {notes} is not a network KataGo can load: Error loading or " \
        f"parsing model file {notes}" in line, err
    assert "useFP16" not in err
    assert not list((isolated_env / "data" / "tuning").rglob("profiles/*.json"))


def test_a_stale_profiles_note_names_the_command_that_renews_it(isolated_env: Path) -> None:
    """The command named once left out the network and the mode: run as given, it measured
    the default network and the note stayed."""
    import shutil

    from katapool.config.profile import (
        FileIdentity,
        NetworkIdentity,
        Profile,
        device_identity,
        engine_identity,
        find_profile,
        network_name,
        now,
        profile_path,
        save_profile,
    )
    from katapool.config.settings import Mode
    from katapool.devices.discover import cpu_device
    from katapool.engine.probe import probe_version

    info, device = probe_version(FAKE_EIGEN), cpu_device()
    model = isolated_env / "my net.bin.gz"
    shutil.copy(G170, model)
    save_profile(profile_path(info.backend, device, model, Mode.GTP), Profile(
        engine=engine_identity(info), device=device_identity(device, info.backend),
        network=NetworkIdentity(name=network_name(model), file=FileIdentity.of(model)),
        mode=Mode.GTP, decisions=[], measured_at=now()))
    assert find_profile(info, device, model, Mode.GTP)[0] is not None
    with model.open("ab") as fh:
        fh.write(b"retrained")
    profile, _, note = find_profile(info, device, model, Mode.GTP)
    assert profile is None and note is not None and "network changed" in note
    assert note.endswith(f"`katapool prepare --measure --device cpu --mode gtp --model "
                         f"'{model}'`"), note


# --- doctor: a registered engine that broke ---------------------------------------------------------

@pytest.mark.parametrize("fault", ["not KataGo", "not executable"])
def test_doctor_names_the_fix_for_a_registered_engine_that_broke(
        isolated_env: Path, fault: str) -> None:
    """The fix was `katapool engine install` whatever the fault: another engine, installed
    over the user's choice (and no help for a lost execute bit)."""
    import shutil

    binary = isolated_env / "katago"
    shutil.copy(FAKE_EIGEN, binary)
    _write_manifest(isolated_env / "data", json.dumps({
        "default": "mine", "engines": [_record("mine", binary)]}))
    if fault == "not KataGo":
        binary.write_text("#!/bin/sh\necho hello\n")  # replaced by something else
        want = "katapool engine install --path BINARY --name mine, or katapool engine remove mine"
    else:
        binary.chmod(0o644)
        want = f"chmod +x {binary}"
    check = _doctor_check("engine")
    assert check.status == "problem" and check.fix == want  # type: ignore[attr-defined]


def test_pocl_without_a_writable_cache_is_not_called_a_missing_driver(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PoCL lists no device when it cannot write its kernel cache (a service user's read-only
    home): the advice was to install an OpenCL driver, which is installed."""
    from katapool.engine.diagnose import diagnose

    vendors = tmp_path / "vendors"
    vendors.mkdir()
    (vendors / "pocl.icd").write_text("libpocl.so.2\n")
    monkeypatch.setenv("OCL_ICD_VENDORS", str(vendors))
    said = "what():  No OpenCL devices were found on your system."
    blocker = tmp_path / "read-only-home"
    blocker.write_text("")  # a file where the folder would go: unwritable even for root
    monkeypatch.setenv("POCL_CACHE_DIR", str(blocker / "pocl"))
    cause = diagnose(said, -6)
    assert cause.startswith(f"PoCL (OpenCL on the CPU) cannot write its kernel cache {blocker}")
    assert "set POCL_CACHE_DIR to a writable folder" in cause
    monkeypatch.setenv("POCL_CACHE_DIR", str(tmp_path / "cache"))
    assert diagnose(said, -6).startswith("no OpenCL device found: install an OpenCL driver")


def test_measuring_stops_before_it_starts_when_its_profiles_cannot_be_kept(
        isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Measuring takes minutes; a profiles folder that cannot be written was found only when
    the result was saved (tuning likewise, with a read-only data directory)."""
    tuning = isolated_env / "data" / "tuning"
    tuning.mkdir(parents=True)
    (tuning / "profiles").write_text("")  # in the way of the folder
    code, _, err = _cli(["prepare", "--fast", "--measure", "--mode", "gtp", "--katago",
                         str(FAKE_TUNER), "--model", str(G170)], capsys)
    line = " ".join(err.split())
    assert code == 2 and f"error: cannot keep measured profiles in {tuning / 'profiles'} " \
        f"({tuning / 'profiles'} is a file)" in line, err
    assert "measuring opencl:0" not in line


# --- choosing the default; names --------------------------------------------------------------------

def test_the_default_engine_is_chosen_without_reinstalling(
        isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Going back to an earlier engine once meant installing it again (for a release: a
    download); a name that is no engine is one line naming the known ones."""
    import shutil

    other = isolated_env / "other-katago"
    shutil.copy(FAKE_EIGEN, other)
    _write_manifest(isolated_env / "data", json.dumps({
        "default": "second", "engines": [_record("first", other), _record("second", FAKE_EIGEN)]}))
    code, out, _ = _cli(["engine", "default", "first"], capsys)
    assert code == 0 and "default engine: first" in " ".join(out.split())
    code, out, _ = _cli(["engine", "info", "--json"], capsys)
    assert code == 0 and json.loads(out)["path"] == str(other)
    code, _, err = _cli(["engine", "default", "third"], capsys)
    assert code == 1 and _one_error_line(err) == \
        "error: no engine named 'third' (known: first, second)"


def test_registering_under_an_installed_engines_name_is_refused(
        isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It replaced the record of the engine katapool installed, whose folder (hundreds of MB)
    nothing would ever remove again."""
    installed = isolated_env / "data" / "engines" / "katrain-1.20.0"
    installed.mkdir(parents=True)
    binary = installed / "AppRun"
    binary.write_bytes(FAKE_EIGEN.read_bytes())
    _write_manifest(isolated_env / "data", json.dumps({"default": "katrain-1.20.0", "engines": [
        {**_record("katrain-1.20.0", binary, source="katrain"),
         "directory": str(installed)}]}))
    code, _, err = _cli(["engine", "install", "--path", str(FAKE_EIGEN), "--name",
                         "katrain-1.20.0"], capsys)
    line = _one_error_line(err)
    assert code == 1 and "--name katrain-1.20.0: that is the name of an engine katapool " \
        "installed" in line and "`katapool engine remove katrain-1.20.0`" in line
    from katapool.engine.manifest import load_manifest

    assert load_manifest().get("katrain-1.20.0").managed  # type: ignore[union-attr]


# --- a binary that hangs --------------------------------------------------------------------------

def test_a_hanging_engine_is_stopped_with_what_it_started(tmp_path: Path) -> None:
    """A wrapper script whose KataGo hangs: the error came after the timeout, but only the
    wrapper was killed and the hung program ran on."""
    from katapool.engine.probe import probe_version
    from katapool.errors import EngineStartError

    pidfile = tmp_path / "hung.pid"
    wrapper = tmp_path / "katago"
    wrapper.write_text(f"#!/bin/sh\nsleep 1000 &\necho $! > {pidfile}\nwait\n")
    wrapper.chmod(0o755)
    try:
        with pytest.raises(EngineStartError, match=r"hung: `katago version` did not finish within 2 s"):
            probe_version(wrapper, timeout=2, fresh=True)
        hung = int(pidfile.read_text())
        deadline = time.monotonic() + 60  # hang guard
        while not _gone(hung) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(hung), "the hung program outlived the probe"
    finally:
        if pidfile.exists() and not _gone(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("argv", [["engine", "info", "--json"], ["doctor", "--json"]])
def test_a_hanging_engine_says_what_katapool_waits_on(
        isolated_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        argv: list[str]) -> None:
    """A binary that never answers `version` once held these commands silently for the whole
    60 s timeout, then named only a bare command. Now a note on stderr says early what
    katapool waits on and for how long at most; stdout (a --json answer) stays clean."""
    import shutil

    hanging = isolated_env / "katago"  # a copy: no answer of the fake's is remembered for it
    shutil.copy2(FAKE_TUNER, hanging)
    monkeypatch.setattr("katapool.engine.probe.WAIT_NOTE_AFTER", 0.2, raising=False)
    monkeypatch.setenv("KATAPOOL_PROBE_TIMEOUT", "2")
    monkeypatch.setenv("FAKE_VERSION", "hang")
    monkeypatch.setenv("KATAPOOL_KATAGO", str(hanging))
    code, out, err = _cli(argv, capsys)
    waiting = [ln for ln in err.splitlines() if "waiting on KataGo" in ln]
    assert waiting == [f"katapool: waiting on KataGo at {hanging} (`katago version`, at most "
                       "2 s)"], err
    said = " ".join((err + out).split())
    assert f"KataGo at {hanging} hung: `katago version` did not finish within 2 s" in said, \
        (out, err)
    if argv[0] == "engine":
        assert code == 1 and out == ""
    else:  # doctor reports it as the engine's problem, as JSON on stdout
        assert "waiting on KataGo" not in out
        json.loads(out)


def test_a_damaged_tensorrt_warmup_record_costs_only_a_warmup(fresh_kp: Katapool,
                                                              tmp_path: Path) -> None:
    """JSON of the wrong shape in trt-warmups.json once stopped prepare with a traceback.
    (A FAKE TensorRT engine and a FAKE nvidia-smi, as in test_prepare_tensorrt.)"""
    fakes = ROOT / "tests" / "fakes"
    env = {"PATH": f"{fakes}{os.pathsep}{os.environ['PATH']}",
           "FAKE_TRT_LOG": str(tmp_path / "starts.jsonl")}
    fresh_kp.run("engine", "install", "--path", str(fakes / "fake_trt_katago"), env=env,
                 check=True)
    record = fresh_kp.data_dir / "tuning" / "trt-warmups.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"not": "a list"}')
    proc = fresh_kp.run("prepare", "--model", str(G170), "--device", "gpu:0", env=env)
    assert proc.returncode == 0 and "warmed" in proc.stdout, proc.stderr
    assert len(json.loads(record.read_text())) == 1
