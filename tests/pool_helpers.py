"""Helpers for pool tests on the real engine."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import G170
from katapool.engine.discovery import resolve_engine
from katapool.engine.probe import probe_version
from katapool.pool import Pool, PoolPolicy
from katapool.pool.launch import LaunchSpec, build_factories
from katapool.pool.member import LocalMember


def make_pool(run_dir: Path, members: int = 2, policy: PoolPolicy | None = None,
              model: Path = G170, configs: list[Path] | None = None) -> Pool:
    info = probe_version(resolve_engine().path)
    spec = LaunchSpec(info=info, model=model, members=members, preset="server",
                      configs=configs or [])
    return Pool(build_factories(spec, run_dir), policy or PoolPolicy(),
                version=info.version, git_hash=info.git_revision)


class Collector:
    """Everything a session received, by caller id."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def __call__(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)
        self.by_id[str(msg.get("id"))].append(msg)

    def finals(self, qid: str) -> list[dict[str, Any]]:
        return [m for m in self.by_id[qid] if m.get("isDuringSearch") is False]

    def errors(self, qid: str) -> list[dict[str, Any]]:
        return [m for m in self.by_id[qid] if "error" in m]


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def member_pids(pool: Pool) -> list[int]:
    out = []
    for slot in pool.supervisor.slots:
        member = slot.member
        if isinstance(member, LocalMember) and member.pid is not None and member.alive:
            out.append(member.pid)
    return out
