"""The asyncio engine process and analysis wrapper, on the real engine."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from conftest import G170, Katapool
from katapool.engine.analysis import AnalysisEngine
from katapool.errors import EngineError, EngineStartError

pytestmark = pytest.mark.engine

POSITION = {"moves": [["B", "Q16"], ["W", "D4"], ["B", "Q4"]], "rules": "chinese", "komi": 7.5,
            "boardXSize": 19, "boardYSize": 19}


@pytest.fixture
def analysis_cfg(kp: Katapool, tmp_path: Path) -> Path:
    cfg = tmp_path / "a.cfg"
    kp.run("config", "generate", "--mode", "analysis", "--model", str(G170),
           "--set", f"logDir={tmp_path / 'logs'}", "-o", str(cfg), check=True)
    return cfg


def test_concurrent_queries_keep_caller_ids(katago: Path, analysis_cfg: Path, tmp_path: Path) -> None:
    async def go() -> tuple[list[dict[str, object]], list[dict[str, object]], Path]:
        log = tmp_path / "stderr.log"
        async with AnalysisEngine(katago, analysis_cfg, G170, stderr_log=log) as engine:
            same_id = {**POSITION, "id": "dup", "maxVisits": 4}
            a, b = await asyncio.gather(
                engine.request({**same_id, "analyzeTurns": [0, 1, 2]}),
                engine.request({**same_id, "analyzeTurns": [3]}),
            )
            assert engine.process.stderr_tail, "stderr is drained into the tail"
        return a, b, log

    a, b, log = asyncio.run(go())
    assert sorted(r["turnNumber"] for r in a) == [0, 1, 2]  # type: ignore[type-var]
    assert [r["turnNumber"] for r in b] == [3]
    assert {r["id"] for r in a + b} == {"dup"}
    assert "Started, ready to begin handling requests" in log.read_text()


def test_engine_error_is_raised_with_field(katago: Path, analysis_cfg: Path) -> None:
    async def go() -> None:
        async with AnalysisEngine(katago, analysis_cfg, G170) as engine:
            with pytest.raises(EngineError, match="field"):
                await engine.request({**POSITION, "moves": [["B", "Q16"], ["W", "Q16"]],
                                      "maxVisits": 1})
            # The engine keeps serving after a rejected query.
            [ok] = await engine.request({**POSITION, "maxVisits": 1})
            assert ok["turnNumber"] == 3

    asyncio.run(go())


def test_death_before_ready_is_diagnosed(katago: Path, analysis_cfg: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.cfg"
    bad.write_text(analysis_cfg.read_text().replace("nnMaxBatchSize = ", "nnMaxBatchSize = x"))

    async def go() -> None:
        async with AnalysisEngine(katago, bad, G170):
            pass

    with pytest.raises(EngineStartError, match="died before it was ready.*nnMaxBatchSize"):
        asyncio.run(go())


def test_engine_dies_with_katapool_even_on_sigkill(katago: Path, analysis_cfg: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from katapool.engine.analysis import AnalysisEngine
        async def main():
            engine = AnalysisEngine(Path({str(katago)!r}), Path({str(analysis_cfg)!r}),
                                    Path({str(G170)!r}))
            await engine.start()
            print(engine.process.pid, flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert psutil.pid_exists(child_pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("katago outlived its SIGKILLed parent")
