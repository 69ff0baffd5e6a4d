"""TensorRT preparation flow, with a fake TensorRT engine and a fake nvidia-smi (named as
such in tests/fakes): no TensorRT build of KataGo can run on a machine without an NVIDIA GPU.
The real-GPU check belongs on the device machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import G170, Katapool

FAKES = Path(__file__).parent / "fakes"


def test_tensorrt_warmup_once_per_device_then_noop(fresh_kp: Katapool, tmp_path: Path) -> None:
    log = tmp_path / "starts.jsonl"
    env = {"PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}", "FAKE_TRT_LOG": str(log)}
    fresh_kp.run("engine", "install", "--path", str(FAKES / "fake_trt_katago"), env=env, check=True)

    devices = json.loads(fresh_kp.run("devices", "--json", env=env, check=True).stdout)
    assert [d["spec"] for d in devices["nvidia"]] == ["nvidia:0", "nvidia:1"]

    first = fresh_kp.run("prepare", "--model", str(G170), env=env, check=True)
    assert first.stdout.count("warmed") == 2
    starts = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [s["trtDeviceToUseThread0"] for s in starts] == ["0", "1"]  # one device at a time
    assert [s["trtUseFP16"] for s in starts] == ["true", "false"]  # Ada: FP16; Pascal: FP32
    assert all(s["homeDataDir"] == str(fresh_kp.data_dir / "katago-home") for s in starts)

    cache = fresh_kp.data_dir / "katago-home" / "trtcache"
    plans = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(plans) == 2
    second = fresh_kp.run("prepare", "--model", str(G170), env=env, check=True)
    assert second.stdout.count("up-to-date") == 2 and "warmed" not in second.stdout
    assert len(log.read_text().splitlines()) == 2, "nothing changed, so no engine started"
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == plans

    # A different production config (another batch size) needs its own plan.
    third = fresh_kp.run("prepare", "--model", str(G170), "--preset", "desktop", "--device",
                         "gpu:0", env=env, check=True)
    assert "warmed" in third.stdout


def test_tensorrt_without_gpu_is_a_clear_error(fresh_kp: Katapool, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "FAKE_TRT_LOG": str(tmp_path / "log")}
    fresh_kp.run("engine", "install", "--path", str(FAKES / "fake_trt_katago"), env=env, check=True)
    proc = fresh_kp.run("prepare", "--model", str(G170), env=env)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: TensorRT needs an NVIDIA GPU")
