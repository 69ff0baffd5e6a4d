"""Ask a KataGo binary what it is (``katago version``) and what devices it sees."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from katapool import paths
from katapool.devices.fingerprint import opencl_fingerprint
from katapool.engine.backend import Backend
from katapool.engine.diagnose import diagnose
from katapool.errors import EngineStartError

_VERSION_RE = re.compile(r"KataGo v?(\d+\.\d+\.\d+[^\s]*)")
_GIT_RE = re.compile(r"Git revision:\s*([0-9a-f]+)")
_OPENCL_DEVICE_RE = re.compile(r"Found OpenCL Device (\d+): (.+?)(?: \(score (-?\d+)\))?$")


@dataclass(frozen=True)
class EngineInfo:
    """What ``katago version`` says about a binary."""

    path: Path
    version: str
    backend: Backend
    git_revision: str | None
    raw: str


@dataclass(frozen=True)
class OpenCLDevice:
    """An OpenCL device, numbered as KataGo numbers them (``openclDeviceToUse``)."""

    index: int
    name: str
    score: int | None


def check_launchable(path: Path) -> None:
    """Fail with a specific message if ``path`` cannot possibly be executed."""
    if not path.exists():
        raise EngineStartError(f"KataGo binary not found: {path} does not exist")
    if path.is_dir():
        raise EngineStartError(f"KataGo binary {path} is a directory, not a program")
    if not os.access(path, os.X_OK):
        raise EngineStartError(f"KataGo binary {path} is not executable (try: chmod +x {path})",
                               fix=f"chmod +x {path}")


# How long a short KataGo command may take (KATAPOOL_PROBE_TIMEOUT, seconds): a wrapper on a
# slow disk or an OpenCL listing that starts a driver may need more than the default.
PROBE_TIMEOUT_DEFAULT = 60.0
# After this long without an answer, say on stderr what katapool waits on: a hanging binary
# would otherwise hold `engine info`, `devices` or `doctor` silently for the whole timeout.
WAIT_NOTE_AFTER = 3.0


def probe_timeout() -> float:
    try:
        value = float(os.environ.get("KATAPOOL_PROBE_TIMEOUT", PROBE_TIMEOUT_DEFAULT))
    except ValueError:
        return PROBE_TIMEOUT_DEFAULT
    return value if value > 0 else PROBE_TIMEOUT_DEFAULT


def run_engine(path: Path, args: list[str], timeout: float | None = None,
               what: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a short KataGo command, mapping OS-level failures to :class:`EngineStartError`.
    ``what``: the command as the user should read it (default ``<name> <args>``)."""
    check_launchable(path)
    timeout = probe_timeout() if timeout is None else timeout
    what = what or " ".join([path.name, *args])
    try:
        # Its own process group: one that hangs is stopped with all it started (a wrapper
        # script's KataGo), not only the wrapper.
        proc = subprocess.Popen([str(path), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        if exc.errno == errno.ENOEXEC:
            raise EngineStartError(
                f"{path} is not a program this machine can run (exec format error)"
            ) from None
        if exc.errno == errno.EACCES:
            raise EngineStartError(f"KataGo binary {path} is not executable") from None
        raise EngineStartError(f"could not start {path}: {exc.strerror}") from None
    try:
        try:
            out, err = proc.communicate(timeout=min(WAIT_NOTE_AFTER, timeout))
        except subprocess.TimeoutExpired:
            if timeout <= WAIT_NOTE_AFTER:
                raise
            # stderr only: stdout may be a --json answer.
            print(f"katapool: waiting on KataGo at {path} (`{what}`, at most {timeout:g} s)",
                  file=sys.stderr, flush=True)
            out, err = proc.communicate(timeout=timeout - WAIT_NOTE_AFTER)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        raise EngineStartError(
            f"KataGo at {path} hung: `{what}` did not finish within {timeout:g} s (it was "
            "stopped; run that command by hand to see where it stops, or set "
            "KATAPOOL_PROBE_TIMEOUT for a binary that is only slow)") from None
    except BaseException:
        _stop_group(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _stop_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def binary_stamp(path: Path) -> tuple[str, int, int] | None:
    """What identifies one build of a binary on disk: resolved path, size and mtime (None if
    it cannot be read); a replaced or rebuilt engine gets a new stamp."""
    try:
        resolved = path.resolve()
        st = resolved.stat()
    except OSError:
        return None
    return str(resolved), st.st_size, st.st_mtime_ns


# Answers of a binary that has not changed since: running it again costs from milliseconds
# to seconds (a wrapper, a slow disk, an AppImage; the OpenCL listing starts the tuner) and
# tells nothing new. Kept in this process and on disk (see _disk_get); only successes are kept.
_version_cache: dict[tuple[str, int, int], EngineInfo] = {}
_opencl_cache: dict[tuple[str, int, int], list[OpenCLDevice]] = {}
PROBE_CACHE_FORMAT = 1


def probe_cache_dir() -> Path:
    return paths.cache_dir() / "probes"


def _disk_file(kind: str, stamp: tuple[str, int, int]) -> Path:
    name = hashlib.sha256(json.dumps([kind, *stamp]).encode()).hexdigest()[:32]
    return probe_cache_dir() / f"{kind}-{name}.json"


def _disk_get(kind: str, stamp: tuple[str, int, int], context: str | None = None) -> Any:
    """A probe's answer stored for this build of the binary (and ``context``: what else the
    answer depends on), or None."""
    try:
        record = json.loads(_disk_file(kind, stamp).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != PROBE_CACHE_FORMAT \
            or record.get("stamp") != list(stamp) or record.get("context") != context:
        return None
    return record.get("value")


def _disk_put(kind: str, stamp: tuple[str, int, int], value: Any, context: str | None = None) -> None:
    """Store atomically (concurrent starts read whole records or none); a cache that cannot
    be written only costs the next start a probe."""
    target = _disk_file(kind, stamp)
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".probe-")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump({"format": PROBE_CACHE_FORMAT, "stamp": list(stamp),
                           "context": context, "value": value}, fh)
            os.replace(tmp, target)
        except OSError:
            os.unlink(tmp)
            raise


def probe_version(path: Path, timeout: float | None = None, fresh: bool = False) -> EngineInfo:
    """Run ``katago version`` (once per build of the binary: see :func:`binary_stamp`); a
    binary that cannot report one gets a diagnosis. ``fresh``: run it even if an earlier
    process did (a health check: a shared library may have gone since)."""
    stamp = binary_stamp(path)
    cached = _version_cache.get(stamp) if stamp else None
    if cached is None and stamp is not None and not fresh and os.access(path, os.X_OK):
        # (A binary no longer executable is run, for its diagnosis.)
        cached = _info_from_disk(path, _disk_get("version", stamp))
        if cached is not None:
            _version_cache[stamp] = cached
    if cached is not None:
        return cached if cached.path == path else replace(cached, path=path)
    info = _run_version(path, timeout)
    if stamp is not None and binary_stamp(path) == stamp:  # not replaced while it ran
        _version_cache[stamp] = info
        _disk_put("version", stamp, {"version": info.version, "backend": info.backend.value,
                                     "git_revision": info.git_revision, "raw": info.raw})
    return info


def _info_from_disk(path: Path, value: Any) -> EngineInfo | None:
    try:
        return EngineInfo(path=path, version=str(value["version"]),
                          backend=Backend(value["backend"]),
                          git_revision=value["git_revision"], raw=str(value["raw"]))
    except (TypeError, KeyError, ValueError):
        return None


def _run_version(path: Path, timeout: float | None) -> EngineInfo:
    proc = run_engine(path, ["version"], timeout=timeout)
    text = proc.stdout + proc.stderr
    match = _VERSION_RE.search(text)
    if proc.returncode == 0 and not match:
        said = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        raise EngineStartError(f"{path} is not KataGo: `{path.name} version` printed no KataGo "
                               "version" + (f" (it printed: {said[:120]})" if said else ""))
    if proc.returncode != 0 or not match:
        raise EngineStartError(f"{path}: {diagnose(text, proc.returncode)}")
    git = _GIT_RE.search(text)
    return EngineInfo(
        path=path,
        version=match.group(1),
        backend=Backend.from_version_text(text),
        git_revision=git.group(1) if git else None,
        raw=text.strip(),
    )


def list_opencl_devices(path: Path, model: Path, timeout: float | None = None,
                        fresh: bool = False) -> list[OpenCLDevice]:
    """The OpenCL devices exactly as KataGo enumerates them (asked once per build of the
    binary and OpenCL runtime, as :func:`probe_version`; ``fresh`` as there).

    KataGo's tuner prints every device it finds before it checks the requested index, so asking
    it to tune a device that cannot exist lists the devices and exits at once, without tuning.
    """
    stamp = binary_stamp(path)
    cached = _opencl_cache.get(stamp) if stamp else None
    if cached is None and stamp is not None and not fresh:
        # On disk, also keyed by the OpenCL runtimes installed (a new driver, new devices).
        with contextlib.suppress(TypeError, ValueError, IndexError):
            stored = _disk_get("opencl", stamp, opencl_fingerprint())
            if stored is not None:
                cached = [OpenCLDevice(int(i), str(n), None if s is None else int(s))
                          for i, n, s in stored]
                _opencl_cache[stamp] = cached
    if cached is not None:
        return list(cached)
    context = opencl_fingerprint()
    devices = _run_opencl_listing(path, model, timeout)
    if stamp is not None and binary_stamp(path) == stamp:
        _opencl_cache[stamp] = list(devices)
        if opencl_fingerprint() == context:
            _disk_put("opencl", stamp, [[d.index, d.name, d.score] for d in devices], context)
    return devices


def _run_opencl_listing(path: Path, model: Path, timeout: float | None) -> list[OpenCLDevice]:
    with tempfile.TemporaryDirectory(prefix="katapool-devices-") as tmp:
        cfg = Path(tmp) / "probe.cfg"
        cfg.write_text(f"logDir = {tmp}/logs\nhomeDataDir = {tmp}/home\n")
        proc = run_engine(
            path,
            ["tuner", "-config", str(cfg), "-model", str(model), "-gpus", "9999",
             "-output", f"{tmp}/none.txt"],
            timeout=timeout, what=f"{path.name} tuner -gpus 9999 (listing OpenCL devices)",
        )
        text = proc.stdout + proc.stderr
        logs = Path(tmp) / "logs"
        if logs.is_dir():
            for log in logs.iterdir():
                text += log.read_text(errors="replace")
    devices: dict[int, OpenCLDevice] = {}
    for line in text.splitlines():
        m = _OPENCL_DEVICE_RE.search(line.strip())
        if m:
            idx = int(m.group(1))
            devices[idx] = OpenCLDevice(idx, m.group(2).strip(), int(m.group(3)) if m.group(3) else None)
    if not devices and "valid devices range" not in text:
        raise EngineStartError(f"OpenCL device query failed: {diagnose(text, proc.returncode)}")
    return [devices[i] for i in sorted(devices)]
