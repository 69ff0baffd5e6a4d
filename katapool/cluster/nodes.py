"""Machines joining a Ray cluster as katapool nodes.

A node declares what katapool's members ask for: its GPUs (``num_gpus``, the ids being
katapool's own GPU numbers, passed to Ray through ``CUDA_VISIBLE_DEVICES``) and the custom
resource ``katapool_cpu``, one per CPU member it will host.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from katapool.cluster import CPU_RESOURCE
from katapool.errors import KatapoolError

DEFAULT_PORT = 6379


@dataclass
class NodePlan:
    gpus: list[int]
    cpu_members: int

    def resources(self) -> dict[str, int]:
        return {CPU_RESOURCE: self.cpu_members} if self.cpu_members else {}

    def env(self) -> dict[str, str]:
        """Ray numbers the GPUs it hands out by CUDA_VISIBLE_DEVICES: katapool's numbers."""
        env = dict(os.environ)
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self.gpus)
        return env


def ray_cli() -> str:
    """The ``ray`` command of this Python environment (the extra installs it)."""
    beside = Path(sys.executable).with_name("ray")
    if beside.is_file():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise KatapoolError("the `ray` command is missing: pip install 'katapool[ray]'")
    return found


def head_argv(plan: NodePlan, port: int = DEFAULT_PORT, block: bool = False) -> list[str]:
    argv = [ray_cli(), "start", "--head", f"--port={port}", f"--num-gpus={len(plan.gpus)}",
            f"--resources={json.dumps(plan.resources())}", "--include-dashboard=false",
            "--disable-usage-stats"]
    return argv + (["--block"] if block else [])


def worker_argv(address: str, plan: NodePlan, block: bool = False) -> list[str]:
    if ":" not in address:
        raise KatapoolError(f"--address {address!r}: expected the head's HOST:PORT")
    argv = [ray_cli(), "start", f"--address={address}", f"--num-gpus={len(plan.gpus)}",
            f"--resources={json.dumps(plan.resources())}", "--disable-usage-stats"]
    return argv + (["--block"] if block else [])


def prepare_argv(plan: NodePlan, model: str | None, fast: bool) -> list[str]:
    """``katapool prepare`` for this node's devices (OpenCL tuning, TensorRT caches), so that
    members placed here start at once."""
    argv = [sys.executable, "-m", "katapool", "prepare"]
    if model:
        argv += ["--model", model]
    if plan.gpus:
        argv += ["--device", ",".join(f"gpu:{g}" for g in plan.gpus)]
    return argv + (["--fast"] if fast else [])
