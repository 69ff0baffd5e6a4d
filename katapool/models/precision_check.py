"""A quantized model beside its FP32 export: accuracy against the engine on the same
positions, file size and ONNX Runtime CPU speed, for ``katapool model quantize``."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from katapool.models.desc import ModelDesc
from katapool.models.speed import Speed, ort_speed
from katapool.models.symmetry import apply_symmetry
from katapool.models.validate import (
    FP16_LIMITS,
    Position,
    Report,
    Sample,
    compare,
    engine_inputs,
    feeds_for,
    onnx_evals,
    onnx_session,
    sample_positions,
)


@dataclass
class Variant:
    precision: str
    size_bytes: int
    speed: Speed | None = None
    report: Report | None = None  # against FP16_LIMITS (the pass line for FP16)

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "size_bytes": self.size_bytes,
                "evals_per_second": None if self.speed is None else self.speed.evals_per_second,
                "batch": None if self.speed is None else self.speed.batch,
                "validation": None if self.report is None else self.report.as_dict()}


def split_positions(games: list[Path], validation: int, calibration: int,
                    seed: int = 7) -> tuple[list[Position], list[Position]]:
    """Disjoint validation and calibration positions from the same games: a model is never
    judged on the positions it was calibrated on."""
    chosen = sample_positions(games, validation + calibration, seed)
    random.Random(seed + 1).shuffle(chosen)
    key: Callable[[Position], tuple[str, int]] = lambda p: (str(p.sgf), p.moves)  # noqa: E731
    return sorted(chosen[:validation], key=key), sorted(chosen[validation:], key=key)


def pick_positions(validation_games: list[Path], calibration_games: list[Path], validation: int,
                   calibration: int, workdir: Path) -> tuple[list[Position], list[Position]]:
    """Validation positions from ``validation_games`` and calibration positions from
    ``calibration_games`` (the same files or not), never one position in both."""
    from katapool.models.validate import with_explicit_rules

    games = list(dict.fromkeys(p.resolve() for p in [*validation_games, *calibration_games]))
    copies = dict(zip(games, with_explicit_rules(games, workdir), strict=True))
    if {p.resolve() for p in validation_games} == {p.resolve() for p in calibration_games}:
        return split_positions(list(copies.values()), validation, calibration)
    checked = sample_positions([copies[p.resolve()] for p in validation_games], validation) \
        if validation else []
    taken = {(p.sgf, p.moves) for p in checked}
    pool = sample_positions([copies[p.resolve()] for p in calibration_games],
                            calibration + len(taken)) if calibration else []
    return checked, [p for p in pool if (p.sgf, p.moves) not in taken][:calibration]


def calibration_feeds(model: ModelDesc, fp32: bytes, katago: Path, config: Path,
                      positions: list[Position], input_model: Path | None, workdir: Path,
                      on_position: Callable[[], None] | None = None) -> list[dict[str, np.ndarray]]:
    """The engine's input tensors for the calibration positions, each under one of the eight
    board symmetries in turn (the network sees every orientation in play)."""
    session = onnx_session(fp32)
    feeds = []
    for i, pos in enumerate(positions):
        spatial, global_ = engine_inputs(katago, config, input_model or model.source.path, pos,
                                         workdir)
        feeds.append(feeds_for(session, model, apply_symmetry(spatial, i % 8), global_))
        if on_position:
            on_position()
    return feeds


def check_variant(model: ModelDesc | None, precision: str, onnx_bytes: bytes,
                  samples: list[Sample] | None, bench_batch: int, bench_seconds: float) -> Variant:
    variant = Variant(precision, len(onnx_bytes))
    if samples and model is not None:
        variant.report = compare(onnx_evals(model, onnx_bytes, samples),
                                 [s.engine for s in samples], FP16_LIMITS)
    if bench_seconds > 0:
        variant.speed = ort_speed(onnx_bytes, bench_batch, bench_seconds)
    return variant
