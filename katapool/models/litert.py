"""Running a .tflite file with the LiteRT interpreter (``ai-edge-litert``, the
``katapool[tflite]`` extra) behind ONNX Runtime's session interface, so validation and speed
code serve both."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from katapool.errors import ModelError
from katapool.models.speed import Speed, synthetic_feeds, time_runs

MISSING = "TFLite needs the LiteRT interpreter: pip install 'katapool[tflite]'"


@dataclass(frozen=True)
class IOInfo:
    name: str
    shape: list[Any]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """LiteRT's C++ side prints "Created TensorFlow Lite XNNPACK delegate" on fd 2; keep
    katapool's own stderr for katapool."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ModelError(MISSING) from None
    return Interpreter


class LiteRTSession:
    """One interpreter; inputs by name; the batch follows the inputs given."""

    def __init__(self, data: bytes, threads: int | None = None) -> None:
        interpreter = _interpreter_class()
        try:
            with _quiet_stderr():
                self.interpreter = interpreter(model_content=data, num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"LiteRT cannot load the file: {exc}") from None
        self._inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
        self._outputs = self.interpreter.get_output_details()
        self._batch: int | None = None

    def get_inputs(self) -> list[IOInfo]:
        return [IOInfo(name, ["batch", *map(int, d["shape_signature"][1:])])
                for name, d in self._inputs.items()]

    def get_outputs(self) -> list[IOInfo]:
        return [IOInfo(d["name"], ["batch", *map(int, d["shape_signature"][1:])]) for d in self._outputs]

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        it = self.interpreter
        batch = next(iter(feeds.values())).shape[0]
        if batch != self._batch:
            for name, d in self._inputs.items():
                it.resize_tensor_input(d["index"], list(feeds[name].shape))
            with _quiet_stderr():
                it.allocate_tensors()
            self._batch = batch
        for name, d in self._inputs.items():
            it.set_tensor(d["index"], np.ascontiguousarray(feeds[name], dtype=np.float32))
        it.invoke()
        return [it.get_tensor(d["index"]) for d in self._outputs]


def litert_speed(data: bytes, batch: int = 8, seconds: float = 3.0,
                 threads: int | None = None) -> Speed:
    """LiteRT CPU evaluations per second (XNNPACK, as an app gets by default)."""
    began = time.perf_counter()
    session = LiteRTSession(data, threads)
    feeds = synthetic_feeds(session, batch)
    session.run(None, feeds)  # allocation is part of preparing
    prepared = time.perf_counter() - began
    runs, elapsed = time_runs(lambda: session.run(None, feeds), seconds)
    return Speed(batch, batch * runs / elapsed, prepared, runs)
