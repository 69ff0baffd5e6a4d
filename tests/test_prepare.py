"""`katapool prepare`: fast start, a real OpenCL tune, and re-runs that do nothing."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import G170, TRANSFORMER, Katapool
from katapool.engine.tuning import REFERENCE_SECTIONS, reference_tuning_text

pytestmark = pytest.mark.engine


def test_reference_file_shape() -> None:
    lines = [ln for ln in reference_tuning_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "VERSION=13"
    assert len(lines) == 1 + 8 + len(REFERENCE_SECTIONS) == 22  # what KataGo's loader demands


def logging_engine(katago: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The real engine behind a wrapper script that appends each command line to a log, so a
    test can tell whether `katago tuner` ran for real (the device probe runs it too, on the
    device that does not exist, `-gpus 9999`, to list the real ones)."""
    log = tmp_path / "engine-calls.log"
    wrapper = tmp_path / "katago-logged"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{katago}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, log


def tuner_runs(log: Path) -> list[str]:
    calls = log.read_text().splitlines() if log.exists() else []
    return [c for c in calls if c.startswith("tuner ") and " -gpus 9999 " not in c]


def test_fast_prepare_twice(fresh_kp: Katapool, katago: Path) -> None:
    fresh_kp.run("engine", "install", "--path", str(katago), check=True)
    first = fresh_kp.run("prepare", "--fast", "--model", str(G170), check=True)
    assert "reference" in first.stdout
    tuning = fresh_kp.data_dir / "tuning"
    [reference] = tuning.glob("reference-*.txt")
    before = {p.name: p.stat().st_mtime_ns for p in (reference, tuning / "index.json")}
    second = fresh_kp.run("prepare", "--fast", "--model", str(G170), check=True)
    assert "up-to-date" in second.stdout
    # Nothing rewritten: the second run only read what the first recorded.
    assert {p.name: p.stat().st_mtime_ns for p in (reference, tuning / "index.json")} == before
    assert sorted(p.name for p in tuning.glob("*.txt")) == [reference.name]


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
    wrapper, calls = logging_engine(katago, tmp_path)
    fresh_kp.run("engine", "install", "--path", str(wrapper), check=True)
    first = fresh_kp.run("prepare", "--model", str(G170), "--board-size", "7", "--batch-size", "1",
                         check=True, timeout=900)
    assert "tuned" in first.stdout
    assert len(tuner_runs(calls)) == 1, calls.read_text()  # the log sees a real tune
    tuned = sorted((fresh_kp.data_dir / "tuning").glob("*-x7.txt"))
    assert len(tuned) == 1
    text = tuned[0].read_text()
    assert text.startswith("VERSION=13")
    params = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(params) == 22  # a complete file, as KataGo's loader demands
    index = json.loads((fresh_kp.data_dir / "tuning" / "index.json").read_text())
    assert [e["kind"] for e in index["entries"]] == ["full"]
    mtime = tuned[0].stat().st_mtime_ns

    second = fresh_kp.run("prepare", "--model", str(G170), check=True)
    assert "up-to-date" in second.stdout and "tuned" not in second.stdout
    assert len(tuner_runs(calls)) == 1, "the second prepare started the tuner again"
    assert tuned[0].stat().st_mtime_ns == mtime
    assert json.loads((fresh_kp.data_dir / "tuning" / "index.json").read_text()) == index

    cfg = tmp_path / "g.cfg"
    fresh_kp.run("config", "generate", "--mode", "gtp", "--model", str(G170), "-o", str(cfg),
                 check=True)
    assert re.search(rf"openclTunerFile = {re.escape(str(tuned[0]))}", cfg.read_text())


def test_prepare_rejects_bad_board_size(kp: Katapool) -> None:
    proc = kp.run("prepare", "--board-size", "25", "--model", str(G170))
    assert proc.returncode != 0 and "--board-size must be 7..19" in proc.stderr
