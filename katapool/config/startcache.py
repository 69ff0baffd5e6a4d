"""The start cache of the protocol commands (`katapool gtp`, `katapool analysis`).

GUIs start their engine at every launch and every engine switch. What a command line
resolves to - the engine and its ``katago version``, the networks, each member's generated
config (or the overrides added to the caller's own) - is the same every time until something
it came from changes, and working it out costs far more than the lookup: the engine
manifest's models, device discovery, presets, config generation, and the imports they need.

So the answer is kept on disk under the command line (and the environment that resolves it)
together with what it came from: every file read (engine binary, networks, the caller's
configs, the manifest, tuning files, presets, katapool's own code), each with its size and
mtime, and a fingerprint of the machine's devices (katapool.devices.fingerprint). A start
whose command line matches and finds all of those unchanged reuses it; anything else works
it out again and stores the new answer. Generated configs are stored as text and written to
the run's own directory, as before, so no running engine depends on a cache entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from katapool import __version__, paths
from katapool.devices.fingerprint import file_stamp, machine_fingerprint
from katapool.engine.backend import Backend
from katapool.engine.probe import EngineInfo

FORMAT = 1
KEEP = 64  # entries kept (each a few KB): the newest, by last use
_DIRS_RE = re.compile(r"^\s*(?:logDir|homeDataDir)\s*=\s*(.+?)\s*$", re.M)
_TUNER_RE = re.compile(r"openclTunerFile\s*=\s*([^,\n]+)")
# What resolves a command line besides its arguments.
_ENV = ("KATAPOOL_KATAGO", "KATAPOOL_MODEL", "PATH")


@dataclass(frozen=True)
class MemberSetup:
    """How one engine process is configured beyond the command line's own arguments."""

    config_text: str | None = None  # a generated config (None: the caller's own -config)
    overrides: tuple[str, ...] = ()  # -override-config added after the caller's own


@dataclass(frozen=True)
class StartPlan:
    info: EngineInfo
    model: Path
    human_model: Path | None
    members: tuple[MemberSetup, ...]
    hit: bool = field(default=False, compare=False)  # reused from the cache


def cache_dir() -> Path:
    return paths.cache_dir() / "start"


def start_key(command: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The key of a command line: the command, its arguments that change the answer, and
    what else resolves them (the environment, the working directory, the data directory)."""
    return {"format": FORMAT, "katapool": __version__, "command": command,
            "args": {k: v for k, v in sorted(args.items())},
            "env": {k: os.environ.get(k) for k in _ENV}, "cwd": os.getcwd(),
            "data_dir": str(paths.data_dir())}


def _entry(key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir() / f"{digest[:32]}.json"


def load(key: Mapping[str, Any]) -> StartPlan | None:
    """The stored answer for ``key``, if nothing it came from has changed."""
    path = _entry(key)
    try:
        record = json.loads(path.read_text())
        if record["key"] != json.loads(json.dumps(key, default=str)):
            return None
        if any(file_stamp(Path(p)) != (tuple(s) if s else None) for p, s in record["deps"]):
            return None
        if record["machine"] != machine_fingerprint():
            return None
        plan = _plan_from_json(record["plan"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not os.access(plan.info.path, os.X_OK):
        return None  # worked out again, for the diagnosis
    # KataGo creates neither nested log directories nor a nested homeDataDir.
    for directory in record.get("dirs", []):
        with contextlib.suppress(OSError):
            Path(directory).mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept by the pruning
    return plan


def stamps(paths_: Iterable[Path]) -> dict[str, tuple[int, int] | None]:
    return {str(p): file_stamp(p) for p in paths_}


def save(key: Mapping[str, Any], plan: StartPlan, deps: Iterable[Path],
         before: Mapping[str, tuple[int, int] | None], machine: str) -> bool:
    """Store ``plan``, worked out from ``deps`` (besides the engine, the networks, the tuning
    files its configs name and the katapool code loaded) on the machine ``machine``.
    ``before``: stamps taken before it was worked out; if any has changed since (another
    process wrote the tuning index meanwhile), the plan may already be stale and is not
    stored. Returns whether it was."""
    files = {Path(p) for p in deps} | {plan.info.path, plan.model} | _code_files()
    if plan.human_model:
        files.add(plan.human_model)
    texts = [m.config_text or "" for m in plan.members] + [o for m in plan.members for o in m.overrides]
    files |= {Path(t.strip()) for text in texts for t in _TUNER_RE.findall(text)}
    now = stamps(sorted(files))
    if any(now.get(p, file_stamp(Path(p))) != s for p, s in before.items()) \
            or machine_fingerprint() != machine:
        return False
    dirs = sorted({d for m in plan.members for d in _DIRS_RE.findall(m.config_text or "")})
    record = {"key": key, "deps": [[p, list(s) if s else None] for p, s in now.items()],
              "machine": machine, "dirs": dirs, "plan": _plan_to_json(plan)}
    target = _entry(key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".entry-")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh, default=str)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return False  # not writable: the next start works it out again
    _prune(target.parent)
    return True


def _code_files() -> set[Path]:
    """katapool's modules loaded in this process: a changed katapool (a checkout being
    edited, an upgrade) may work the answer out differently."""
    found = set()
    for name, module in list(sys.modules.items()):
        if name == "katapool" or name.startswith("katapool."):
            file = getattr(module, "__file__", None)
            if file:
                found.add(Path(file))
    return found


def _prune(directory: Path, keep: int = KEEP) -> None:
    with contextlib.suppress(OSError):
        entries = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            with contextlib.suppress(OSError):
                old.unlink()


def _plan_to_json(plan: StartPlan) -> dict[str, Any]:
    info = plan.info
    return {"engine": {"path": str(info.path), "version": info.version,
                       "backend": info.backend.value, "git_revision": info.git_revision,
                       "raw": info.raw},
            "model": str(plan.model),
            "human_model": str(plan.human_model) if plan.human_model else None,
            "members": [{"config_text": m.config_text, "overrides": list(m.overrides)}
                        for m in plan.members]}


def _plan_from_json(data: Mapping[str, Any]) -> StartPlan:
    engine = data["engine"]
    info = EngineInfo(path=Path(engine["path"]), version=str(engine["version"]),
                      backend=Backend(engine["backend"]), git_revision=engine["git_revision"],
                      raw=str(engine["raw"]))
    members = tuple(MemberSetup(m["config_text"], tuple(str(o) for o in m["overrides"]))
                    for m in data["members"])
    human = data["human_model"]
    return StartPlan(info, Path(data["model"]), Path(human) if human else None, members, hit=True)
