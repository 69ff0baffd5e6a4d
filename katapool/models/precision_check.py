"""A quantized model beside its FP32 export: accuracy against the engine on the same
positions, file size and ONNX Runtime CPU speed, for ``katapool model quantize``."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from katapool.errors import ConfigError
from katapool.models.desc import ModelDesc
from katapool.models.speed import Speed, ort_speed
from katapool.models.symmetry import apply_symmetry
from katapool.models.validate import (
    FP16_LIMITS,
    Position,
    Report,
    Sample,
    compare,
    engine_inputs_many,
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


def _sample(games: list[Path], count: int, board: int, seed: int = 7) -> list[Position]:
    """``count`` positions of the export's board size, or a ConfigError saying what there is."""
    every = [p for p in sample_positions(games, 10**9, seed) if p.size == board]
    if len(every) < count:
        sizes = sorted({p.size for p in sample_positions(games, 10**9, seed)})
        raise ConfigError(f"the games hold {len(every)} usable {board}x{board} positions "
                          f"(board sizes: {', '.join(map(str, sizes))}), {count} are needed: "
                          "give more games or ask for fewer positions")
    random.Random(seed).shuffle(every)
    return sorted(every[:count], key=lambda p: (str(p.sgf), p.moves))


def split_positions(games: list[Path], validation: int, calibration: int,
                    seed: int = 7, board: int = 19) -> tuple[list[Position], list[Position]]:
    """Disjoint validation and calibration positions from the same games: a model is never
    judged on the positions it was calibrated on."""
    chosen = _sample(games, validation + calibration, board, seed)
    random.Random(seed + 1).shuffle(chosen)
    key: Callable[[Position], tuple[str, int]] = lambda p: (str(p.sgf), p.moves)  # noqa: E731
    return sorted(chosen[:validation], key=key), sorted(chosen[validation:], key=key)


def pick_positions(validation_games: list[Path], calibration_games: list[Path], validation: int,
                   calibration: int, workdir: Path,
                   board: int = 19) -> tuple[list[Position], list[Position]]:
    """Validation positions from ``validation_games`` and calibration positions from
    ``calibration_games`` (the same files or not), never one position in both."""
    from katapool.models.validate import with_explicit_rules

    games = list(dict.fromkeys(p.resolve() for p in [*validation_games, *calibration_games]))
    copies = dict(zip(games, with_explicit_rules(games, workdir), strict=True))
    if {p.resolve() for p in validation_games} == {p.resolve() for p in calibration_games}:
        return split_positions(list(copies.values()), validation, calibration, board=board)
    checked = _sample([copies[p.resolve()] for p in validation_games], validation, board) \
        if validation else []
    taken = {(p.sgf, p.moves) for p in checked}
    cal_games = [copies[p.resolve()] for p in calibration_games]
    pool = [p for p in sample_positions(cal_games, 10**9)
            if (p.sgf, p.moves) not in taken and p.size == board] if calibration else []
    if len(pool) < calibration:
        raise ConfigError(f"the calibration games hold {len(pool)} usable {board}x{board} "
                          f"positions outside the validation set, {calibration} are needed")
    random.Random(11).shuffle(pool)
    return checked, sorted(pool[:calibration], key=lambda p: (str(p.sgf), p.moves))


def calibration_feeds(model: ModelDesc, fp32: bytes, katago: Path, config: Path,
                      positions: list[Position], input_model: Path | None, workdir: Path,
                      on_position: Callable[[], None] | None = None) -> list[dict[str, np.ndarray]]:
    """The engine's input tensors for the calibration positions, each under one of the eight
    board symmetries in turn (the network sees every orientation in play)."""
    session = onnx_session(fp32)
    feeds = []
    inputs = engine_inputs_many(katago, config, input_model or model.source.path, positions,
                                workdir)
    with contextlib.closing(inputs):
        for i, (spatial, global_) in enumerate(inputs):
            feeds.append(feeds_for(session, model, apply_symmetry(spatial, i % 8), global_))
            if on_position:
                on_position()
    return feeds


def check_variant(model: ModelDesc | None, precision: str, onnx_bytes: bytes,
                  samples: list[Sample] | None, bench_batch: int, bench_seconds: float) -> Variant:
    from katapool.models.quantize import as_model_error

    variant = Variant(precision, len(onnx_bytes))
    with as_model_error(f"running the {precision} model with ONNX Runtime"):
        if samples and model is not None:
            variant.report = compare(onnx_evals(model, onnx_bytes, samples),
                                     [s.engine for s in samples], FP16_LIMITS)
        if bench_seconds > 0:
            variant.speed = ort_speed(onnx_bytes, bench_batch, bench_seconds)
    return variant


def feeds_from_samples(model: ModelDesc, fp32: bytes,
                       samples: list[Sample]) -> list[dict[str, np.ndarray]]:
    """Calibration feeds from positions the engine already evaluated (their input tensors),
    each under one of the eight symmetries in turn, as ``calibration_feeds`` makes them."""
    session = onnx_session(fp32)
    return [feeds_for(session, model, apply_symmetry(s.spatial, i % 8), s.global_)
            for i, s in enumerate(samples)]
