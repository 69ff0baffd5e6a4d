"""ONNX Runtime CPU evaluations per second of an ONNX network, the way a user would run it
(default graph optimizations, all cores)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Speed:
    batch: int
    evals_per_second: float
    session_seconds: float  # creating the session: ONNX Runtime's own preparation
    runs: int


def synthetic_feeds(session: Any, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Plausible inputs from the session's shapes: every point on the board, a few stones;
    speed does not depend on the position."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for item in session.get_inputs():
        shape = [batch, *(d if isinstance(d, int) else 1 for d in item.shape[1:])]
        if item.name == "InputSpatial":
            value = (rng.random(shape) < 0.15).astype(np.float32)
            value[:, 0] = 1.0
        elif item.name == "InputMask":
            value = np.ones(shape, dtype=np.float32)
        else:
            value = np.zeros(shape, dtype=np.float32)
        feeds[item.name] = value
    return feeds


def ort_speed(onnx_bytes: bytes, batch: int = 8, seconds: float = 3.0, warmup: int = 2,
              threads: int | None = None) -> Speed:
    """Runs batches for at least ``seconds`` (and at least 3 runs) after ``warmup`` runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    began = time.perf_counter()
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    session_seconds = time.perf_counter() - began
    feeds = synthetic_feeds(session, batch)
    runs, elapsed = time_runs(lambda: session.run(None, feeds), seconds, warmup)
    return Speed(batch, batch * runs / elapsed, session_seconds, runs)


def time_runs(run: Callable[[], object], seconds: float, warmup: int = 2) -> tuple[int, float]:
    """(runs, seconds): ``run`` called ``warmup`` times untimed, then for at least ``seconds``
    and at least 3 times."""
    for _ in range(warmup):
        run()
    runs = 0
    began = time.perf_counter()
    while runs < 3 or time.perf_counter() - began < seconds:
        run()
        runs += 1
    return runs, time.perf_counter() - began
