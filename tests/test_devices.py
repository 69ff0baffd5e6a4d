"""`katapool devices` on this machine (no GPU: PoCL's CPU device and the CPU itself)."""

from __future__ import annotations

import json

import psutil
import pytest

from conftest import G170, Katapool

pytestmark = pytest.mark.engine


def test_devices_json_without_gpu(kp: Katapool) -> None:
    proc = kp.run("devices", "--json", "--model", str(G170), env={"PATH": "/usr/bin:/bin"},
                  check=True)
    report = json.loads(proc.stdout)
    assert report["nvidia"] == []
    assert any("no NVIDIA GPU" in n for n in report["notes"])
    [opencl] = report["opencl"]
    assert opencl["spec"] == "opencl:0" and opencl["is_cpu_like"] is True
    assert report["cpu"]["cores"] >= 1
    assert report["ram_mib"] == psutil.virtual_memory().total >> 20


def test_devices_table_says_no_gpu(kp: Katapool) -> None:
    proc = kp.run("devices", "--model", str(G170), env={"PATH": "/usr/bin:/bin"}, check=True)
    assert "No GPU found" in proc.stdout and "opencl:0" in proc.stdout
