"""Every generated config loads in the real KataGo with no config warning at all."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import G170, Katapool

pytestmark = pytest.mark.engine

PRESETS = ["desktop", "server", "rpi", "jetson"]
QUERY = {"id": "q", "moves": [["B", "Q16"], ["W", "D4"]], "rules": "chinese", "komi": 7.5,
         "boardXSize": 19, "boardYSize": 19, "maxVisits": 2}


def generate(kp: Katapool, tmp_path: Path, mode: str, preset: str) -> tuple[Path, Path]:
    logs = tmp_path / "logs"
    cfg = tmp_path / f"{mode}-{preset}.cfg"
    kp.run("config", "generate", "--mode", mode, "--preset", preset, "--model", str(G170),
           "--set", f"logDir={logs}", "--set", "maxVisits=8", "-o", str(cfg), check=True)
    return cfg, logs


def warnings_in(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "WARNING" in ln or "Unused key" in ln]


@pytest.mark.parametrize("preset", PRESETS)
def test_analysis_config_loads_cleanly(kp: Katapool, katago: Path, tmp_path: Path,
                                       preset: str) -> None:
    cfg, logs = generate(kp, tmp_path, "analysis", preset)
    proc = subprocess.run([str(katago), "analysis", "-config", str(cfg), "-model", str(G170)],
                          input=json.dumps(QUERY) + "\n", capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [answer] = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert answer["id"] == "q" and answer["moveInfos"]
    log_text = "".join(p.read_text() for p in logs.iterdir())
    assert "Loaded config" in log_text or "Started, ready" in log_text
    assert warnings_in(proc.stderr) == []
    assert warnings_in(log_text) == []


@pytest.mark.parametrize("preset", PRESETS)
def test_gtp_config_loads_cleanly(kp: Katapool, katago: Path, tmp_path: Path, preset: str) -> None:
    cfg, logs = generate(kp, tmp_path, "gtp", preset)
    proc = subprocess.run([str(katago), "gtp", "-config", str(cfg), "-model", str(G170)],
                          input="version\ngenmove b\nquit\n", capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    replies = [ln for ln in proc.stdout.splitlines() if ln.startswith("=")]
    assert replies[0].startswith("= 1.18.1")
    assert len(replies) == 3, proc.stdout
    log_text = "".join(p.read_text() for p in logs.iterdir())
    assert "GTP ready" in log_text
    assert warnings_in(proc.stderr) == []
    assert warnings_in(log_text) == []


def test_a_typo_would_be_caught(kp: Katapool, katago: Path, tmp_path: Path) -> None:
    """The check above can fail: KataGo does warn about a key it does not use."""
    cfg, logs = generate(kp, tmp_path, "analysis", "desktop")
    cfg.write_text(cfg.read_text() + "nnMaxBatchSzie = 8\n")
    proc = subprocess.run([str(katago), "analysis", "-config", str(cfg), "-model", str(G170)],
                          input=json.dumps(QUERY) + "\n", capture_output=True, text=True,
                          timeout=300)
    assert any("nnMaxBatchSzie" in w for w in warnings_in(proc.stderr))


def test_generated_config_points_at_shared_home_and_tuning(kp: Katapool, tmp_path: Path) -> None:
    cfg, _ = generate(kp, tmp_path, "analysis", "desktop")
    values = dict(ln.split(" = ", 1) for ln in cfg.read_text().splitlines()
                  if " = " in ln and not ln.startswith("#"))
    assert values["homeDataDir"] == str(kp.data_dir / "katago-home")
    assert Path(values["openclTunerFile"]).is_file()
    assert values["openclDeviceToUseThread0"] == "0"
    assert values["openclUseFP16"] == "false"  # PoCL is a CPU: no FP16


def test_cli_errors_are_one_line(kp: Katapool) -> None:
    for args, needle in [
        (["--preset", "laptop"], "unknown preset 'laptop'"),
        (["--set", "nnMaxBatchSize=-3"], "nnMaxBatchSize"),
        (["--set", "maxVisits=lots"], "maxVisits"),
        (["--device", "gpu:3"], "not found on this machine"),
        (["--members", "0"], "--members"),
    ]:
        proc = kp.run("config", "generate", "--mode", "analysis", "--model", str(G170), *args)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
