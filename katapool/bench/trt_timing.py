"""Evaluations per second of a TensorRT plan: deserialized and given its buffers once, then
batch after batch, each with its copies to and from the GPU (as KataGo's benchmarknn counts).

GPU machines only; the plan comes from ``katapool.models.tensorrt_build.build_engine``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from katapool.models.speed import time_runs
from katapool.models.tensorrt_build import PlanRunner


def plan_speed(plan_path: str | Path, feeds: Mapping[str, np.ndarray], seconds: float,
               warmup: int = 3) -> tuple[float, int]:
    """(evaluations per second, batches run) for ``feeds`` (one batch) through the plan."""
    with PlanRunner(plan_path, feeds) as runner:
        runs, elapsed = time_runs(runner.run, seconds, warmup)
        return runner.batch * runs / elapsed, runs
