"""Finding the processes a test started, by what they are rather than by where they live.

An engine is a process whose executable is named ``katago`` (KaTrain's AppImage launcher
``AppRun`` execs it, so the name is the engine's own). A process belongs to this test run when
its environment carries the run's mark, which every child inherits from pytest (katapool
passes its environment on to the engines it starts), whatever its parent is now: an engine
orphaned by a killed katapool still carries it.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable

import psutil

RUN_MARK = "PYTEST_KATAPOOL_RUN"  # not KATAPOOL_*: the fixtures strip those from child envs
ENGINE_NAMES = frozenset({"katago"})


def mark_this_run() -> str:
    """Set the run's mark in our environment, for every process started from now on. Each
    pytest-xdist worker has its own (it inherits the controller's): a test's leftovers are
    looked for among its own worker's processes, never the other worker's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        os.environ[RUN_MARK] = f"{worker}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    else:
        os.environ.setdefault(RUN_MARK, f"{os.getpid()}-{uuid.uuid4().hex[:12]}")
    return os.environ[RUN_MARK]


def is_engine(p: psutil.Process) -> bool:
    try:
        return p.name() in ENGINE_NAMES
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def engines_under(pid: int, include_zombies: bool = False) -> list[psutil.Process]:
    """The KataGo engines among ``pid``'s descendants."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [k for k in kids if is_engine(k) and (include_zombies or _alive(k))]


def ours() -> list[psutil.Process]:
    """Live processes of this run, pytest itself left out."""
    mark = os.environ.get(RUN_MARK)
    if mark is None:
        return []
    me = os.getpid()
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != me and _alive(p) and p.environ().get(RUN_MARK) == mark:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


Identity = tuple[int, float]  # pid and start time: pids are reused


def _identity(p: psutil.Process) -> Identity:
    return p.pid, p.create_time()


def snapshot() -> set[Identity]:
    """The run's processes now (a fixture's daemon, ...)."""
    out = set()
    for p in ours():
        try:
            out.add(_identity(p))
        except psutil.Error:
            continue
    return out


def started_since(before: set[Identity]) -> list[psutil.Process]:
    """The run's live processes that neither were in ``before`` nor descend from one that
    was: a member that a fixture's daemon restarts during a test is the daemon's, not the
    test's."""
    mark = os.environ.get(RUN_MARK)
    me = os.getpid()
    new = []
    for p in ours():
        try:
            chain = [p, *p.parents()]
            mine = [q for q in chain if q.pid not in (me, 1) and _marked(q, mark)]
            if not any(_identity(q) in before for q in mine):
                new.append(p)
        except psutil.Error:
            continue
    return new


def _marked(p: psutil.Process, mark: str | None) -> bool:
    try:
        return p.environ().get(RUN_MARK) == mark
    except psutil.Error:
        return False


def describe(procs: Iterable[psutil.Process]) -> str:
    lines = []
    for p in procs:
        try:
            cmd = " ".join(p.cmdline())[:160]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            cmd = "?"
        lines.append(f"  pid {p.pid}: {cmd}")
    return "\n".join(lines)


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of ``procs`` still alive (zombies count as gone) after up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if _alive(p)]
    return left


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.kill()
    psutil.wait_procs(procs, timeout=10)
