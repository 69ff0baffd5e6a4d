"""Bounded memory: every buffer that grows with a slow or stopped peer has a limit, and past it
that peer (and only that peer) gets an error or is cut off."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from katapool.engine.process import EngineProcess
from katapool.gtp.bridge import BridgeOptions, GtpBridge
from pool_helpers import wait_for

FAKES = Path(__file__).parent / "fakes"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_gtp_restarts_release_every_file(tmp_path: Path) -> None:
    """A hundred engine restarts through the bridge's own recovery path leave no file open:
    each replaced engine's log handler and pipes are released. The engine is the fake one
    (tests/fakes/fake_gtp_katago): a real KataGo takes seconds to start here, so a hundred
    restarts would take minutes. Every engine object is kept: release must not wait for the
    garbage collector to happen upon an unreachable one."""
    log = tmp_path / "gtp.stderr.log"
    engines: list[EngineProcess] = []

    async def go() -> tuple[int, int, list[bytes]]:
        async def spawn(first: bool) -> EngineProcess:
            engine = EngineProcess([str(FAKES / "fake_gtp_katago")], name="fake katago gtp",
                                   ready_marker="GTP ready", start_timeout=60, stderr_log=log)
            await engine.start()
            engines.append(engine)
            return engine

        out: list[bytes] = []
        bridge = GtpBridge(spawn, out.append, lambda line: None,
                           BridgeOptions(crash_budget=1000, crash_window=1.0))

        async def restart(count: int) -> None:
            for _ in range(count):
                before = bridge.restarts
                assert bridge.engine is not None
                bridge.engine.signal(signal.SIGKILL)
                await wait_for(lambda b=before: bridge.restarts > b and bridge.engine_ok,  # type: ignore[misc]
                               60, "the bridge to restart its engine")

        await bridge.start()
        try:
            await restart(3)  # warm: anything opened once (loggers, the event loop's own)
            await asyncio.sleep(0.2)
            before = _open_fds()
            await restart(100)
            await asyncio.sleep(0.5)  # the last killed engine's stderr reaches its end
            after = _open_fds()
            bridge.on_gui_line("7 name")
            await wait_for(lambda: b"=7 \n\n" in out, 60, "an answer from the 104th engine")
        finally:
            await bridge.close()
        return before, after, out

    before, after, out = asyncio.run(go())
    assert after - before <= 2, f"{after - before} files left open by 100 engine restarts"
    assert b"=7 \n\n" in out
    assert "GTP ready" in log.read_text()
    assert len(engines) == 104
