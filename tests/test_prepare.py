"""`katapool prepare`: fast start, a real OpenCL tune, and re-runs that do nothing."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import G170, TRANSFORMER, Katapool
from katapool.engine.tuning import REFERENCE_SECTIONS, reference_tuning_text

pytestmark = pytest.mark.engine


def test_reference_file_shape() -> None:
    lines = [ln for ln in reference_tuning_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "VERSION=13"
    assert len(lines) == 1 + 8 + len(REFERENCE_SECTIONS) == 22  # what KataGo's loader demands


def test_fast_prepare_twice(fresh_kp: Katapool, katago: Path) -> None:
    fresh_kp.run("engine", "install", "--path", str(katago), check=True)
    first = fresh_kp.run("prepare", "--fast", "--model", str(G170), check=True)
    assert "reference" in first.stdout
    started = time.monotonic()
    second = fresh_kp.run("prepare", "--fast", "--model", str(G170), check=True)
    assert time.monotonic() - started < 5
    assert "up-to-date" in second.stdout


def test_engine_starts_at_once_with_reference_tuning(kp: Katapool, katago: Path,
                                                     tmp_path: Path) -> None:
    """The transformer net has never been tuned here; with the reference file it still starts
    without running the tuner."""
    cfg = tmp_path / "a.cfg"
    kp.run("config", "generate", "--mode", "analysis", "--model", str(TRANSFORMER),
           "--set", f"logDir={tmp_path / 'logs'}", "-o", str(cfg), check=True)
    query = {"id": "t", "moves": [], "rules": "chinese", "komi": 7.5, "boardXSize": 19,
             "boardYSize": 19, "maxVisits": 1}
    proc = subprocess.run([str(katago), "analysis", "-config", str(cfg), "-model", str(TRANSFORMER)],
                          input=json.dumps(query) + "\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "Loaded tuning parameters from" in proc.stderr
    assert "Performing autotuning" not in proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["rootInfo"]["visits"] >= 1


def test_full_tune_then_noop(fresh_kp: Katapool, katago: Path, tmp_path: Path) -> None:
    """A real `katago tuner` run (small board and batch to keep CI fast), then a no-op."""
    fresh_kp.run("engine", "install", "--path", str(katago), check=True)
    first = fresh_kp.run("prepare", "--model", str(G170), "--board-size", "7", "--batch-size", "1",
                         check=True, timeout=900)
    assert "tuned" in first.stdout
    tuned = sorted((fresh_kp.data_dir / "tuning").glob("*-x7.txt"))
    assert len(tuned) == 1
    text = tuned[0].read_text()
    assert text.startswith("VERSION=13")
    params = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(params) == 22  # a complete file, as KataGo's loader demands
    index = json.loads((fresh_kp.data_dir / "tuning" / "index.json").read_text())
    assert [e["kind"] for e in index["entries"]] == ["full"]
    mtime = tuned[0].stat().st_mtime_ns

    started = time.monotonic()
    second = fresh_kp.run("prepare", "--model", str(G170), check=True)
    assert time.monotonic() - started < 5
    assert "up-to-date" in second.stdout and "tuned" not in second.stdout
    assert tuned[0].stat().st_mtime_ns == mtime

    cfg = tmp_path / "g.cfg"
    fresh_kp.run("config", "generate", "--mode", "gtp", "--model", str(G170), "-o", str(cfg),
                 check=True)
    assert re.search(rf"openclTunerFile = {re.escape(str(tuned[0]))}", cfg.read_text())


def test_prepare_rejects_bad_board_size(kp: Katapool) -> None:
    proc = kp.run("prepare", "--board-size", "25", "--model", str(G170))
    assert proc.returncode != 0 and "--board-size must be 7..19" in proc.stderr
