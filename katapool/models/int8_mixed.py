"""INT8 where it costs nothing: mixed precision chosen by each node's measured sensitivity.

Plain post-training INT8 misses KataGo's FP16 limits by 10-100x, and the loss is not spread
evenly: a few convolutions or products carry most of it. So every candidate (a trunk
convolution or matrix product) is first quantized alone and the error it causes against the
engine is measured on calibration positions; then candidates go INT8 from the least sensitive
up for as long as all of them together stay within the error budget (KataGo's FP16 limits
times a margin). The rest stay FP32. Activation ranges are calibrated once and shared by every
trial, so a trial costs one quantization pass and one evaluation, not a calibration.

The file is the same symmetric INT8 Q/DQ form as a plain ``quantize --int8`` (TensorRT's
explicit quantization takes it unchanged), with the chosen nodes and the evidence recorded in
its metadata.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from katapool.errors import ModelError
from katapool.models.desc import ModelDesc
from katapool.models.quantize import Int8Options, int8_candidates, mark_precision, to_int8
from katapool.models.validate import (
    FP16_LIMITS,
    Report,
    Sample,
    compare,
    session_evals,
)

METRICS = tuple(FP16_LIMITS)  # winrate, lead, top_policy, policy_kl


def limit_ratio(report: Report, limits: dict[str, float] = FP16_LIMITS) -> float:
    """The worst metric's p99 as a fraction of its limit: 1.0 is exactly at KataGo's line."""
    return max(report.errors[k]["p99"] / limits[k] for k in METRICS)


def cpu_session(onnx_bytes: bytes) -> Any:
    """A plain ONNX Runtime CPU session. (Allowing signed INT8 fusions on x86,
    ``session.qdqisint8allowed``, was measured on this AVX2 machine: 4x slower than without
    and saturating, up to 3 logits off; left at ONNX Runtime's default.)"""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # trial files leave unused FP32 weights: a warning each
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


@dataclass
class Trial:
    """One set of INT8 nodes and what it did on the selection positions."""

    int8_nodes: int
    ratio: float  # limit_ratio on the selection positions
    errors: dict[str, float]  # metric -> p99
    evals_per_second: float | None = None


@dataclass
class Sensitivity:
    """One unit: the nodes reading the same activation (an attention layer's query, key and
    value products). ONNX Runtime quantizes a tensor once for all its readers, so they go INT8
    together or not at all."""

    nodes: list[str]
    ratio: float
    errors: dict[str, float]


def units(proto: Any, candidates: Sequence[str]) -> list[list[str]]:
    """Candidates grouped by the activation they read, in graph order."""
    by_input: dict[str, list[str]] = {}
    wanted = set(candidates)
    for node in proto.graph.node:
        if node.name in wanted:
            by_input.setdefault(node.input[0], []).append(node.name)
    return list(by_input.values())


@dataclass
class MixedResult:
    proto: Any
    chosen: list[str]  # INT8 nodes, least sensitive unit first
    candidates: int  # nodes INT8 could touch
    budget: float  # fraction of KataGo's FP16 limits allowed on the selection positions
    sensitivities: list[Sensitivity]
    curve: list[Trial]  # every trial, by number of INT8 nodes
    stopped: str  # why the search stopped where it did

    def as_dict(self) -> dict[str, Any]:
        return {"int8_nodes": self.chosen, "candidates": self.candidates, "budget": self.budget,
                "stopped": self.stopped,
                "sensitivities": [asdict(s) for s in self.sensitivities],
                "curve": [asdict(t) for t in self.curve]}


@dataclass
class MixedSearch:
    """Inputs of the search; ``selection``: positions with the engine's own evaluation, used
    to rank and to stop (never the held-out validation positions)."""

    model: ModelDesc
    proto: Any
    calibration: Sequence[dict[str, np.ndarray]]
    selection: Sequence[Sample]
    options: Int8Options = field(default_factory=Int8Options)
    budget: float = 0.5
    # Selection positions that rank the units; None: all. A unit's damage can sit in a few
    # positions of a hundred (g170: one convolution 0.94x the limits on 32 positions, 13x on
    # 200), so a small ranking set misorders the units (docs/quantization.md).
    ranking_positions: int | None = None
    speed: Callable[[bytes], float] | None = None  # evals/s of a file, for the curve
    progress: Callable[[str, int, int], None] | None = None  # (stage, done, total)


def _errors(report: Report) -> dict[str, float]:
    return {k: report.errors[k]["p99"] for k in METRICS}


def search(req: MixedSearch) -> MixedResult:
    if req.budget <= 0:
        raise ModelError(f"error budget {req.budget}: must be above 0 (1.0 = KataGo's FP16 "
                         "limits)")
    if len(req.selection) < 8:
        raise ModelError("mixed precision needs at least 8 selection positions to rank nodes")
    candidates = int8_candidates(req.proto)
    if not candidates:
        raise ModelError("this network has no convolution or matrix product INT8 could touch")
    groups = units(req.proto, candidates)
    ranking = list(req.selection if req.ranking_positions is None
                   else req.selection[:max(8, req.ranking_positions)])
    with tempfile.TemporaryDirectory(prefix="katapool-mixed-") as tmp:
        ranges = Path(tmp) / "ranges.json"

        def build(nodes: Sequence[str]) -> Any:
            return to_int8(req.proto, req.calibration, req.options, include=list(nodes),
                           ranges=ranges)

        def measure(proto: Any, samples: Sequence[Sample]) -> Report:
            session = cpu_session(proto.SerializeToString())
            return compare(session_evals(req.model, session, list(samples), batch=16),
                           [s.engine for s in samples], FP16_LIMITS)

        sensitivities = []
        for i, unit in enumerate(groups):
            if req.progress:
                req.progress("sensitivity", i, len(groups))
            report = measure(build(unit), ranking)
            sensitivities.append(Sensitivity(unit, limit_ratio(report), _errors(report)))
        if req.progress:
            req.progress("sensitivity", len(groups), len(groups))
        order = [s.nodes for s in sorted(sensitivities, key=lambda s: s.ratio)]
        trials: dict[int, tuple[Trial, Any]] = {}

        def first(k: int) -> list[str]:
            return [name for unit in order[:k] for name in unit]

        def trial(k: int) -> Trial:
            if k not in trials:
                proto = build(first(k)) if k else req.proto
                report = measure(proto, req.selection)
                speed = req.speed(proto.SerializeToString()) if req.speed else None
                trials[k] = (Trial(len(first(k)), limit_ratio(report), _errors(report), speed),
                             proto)
                if req.progress:
                    req.progress("combining", len(trials), 0)
            return trials[k][0]

        # The trade-off curve at even steps, then bisection between the last step within the
        # budget and the first past it: errors grow with the count, though not strictly.
        n = len(order)  # units
        steps = sorted({0, n, *(round(n * i / 8) for i in range(1, 8))})
        fits = [k for k in steps if trial(k).ratio <= req.budget]
        best = max(fits) if fits else 0
        over = min((k for k in steps if k > best and trial(k).ratio > req.budget), default=None)
        lo, hi = best, over
        while hi is not None and hi - lo > 1:
            mid = (lo + hi) // 2
            if trial(mid).ratio <= req.budget:
                lo = mid
            else:
                hi = mid
        best = max(k for k, (t, _) in trials.items() if t.ratio <= req.budget) \
            if any(t.ratio <= req.budget for t, _ in trials.values()) else 0
        chosen = first(best)
        total = len(candidates)
        if best == n:
            stopped = f"all {total} candidates INT8 stay within {req.budget:g}x the limits"
        elif best == 0:
            stopped = (f"even the least sensitive unit alone is over {req.budget:g}x the limits"
                       if trial(1).ratio > req.budget else "no INT8 node fits the budget")
        else:
            nxt = trials[best + 1][0] if best + 1 in trials else None
            stopped = (f"{len(chosen)} of {total} nodes INT8; the next unit "
                       f"({len(order[best])} node(s)) reaches {nxt.ratio:.2f}x the limits"
                       if nxt else f"{len(chosen)} of {total} nodes INT8 within "
                       f"{req.budget:g}x the limits")
        chosen_proto = trials[best][1]
        if best == 0:  # the FP32 export itself: leave the caller's copy alone
            chosen_proto = type(req.proto)()
            chosen_proto.CopyFrom(req.proto)
    result = MixedResult(chosen_proto, chosen, total, req.budget, sensitivities,
                         [t for _, (t, _p) in sorted(trials.items())], stopped)
    _record(chosen_proto, result, trials[best][0], req.options)
    return result


def _record(proto: Any, result: MixedResult, picked: Trial, options: Int8Options) -> None:
    """The file says which nodes are INT8 and why: each chosen unit's own measured error, the
    budget, what the whole selection measured and why the search stopped."""
    acts = "" if options.activations == "int8" else ", u8 activations"
    mark_precision(proto, f"int8 mixed ({len(result.chosen)} of {result.candidates} "
                          f"nodes{acts})" if result.chosen
                   else "fp32 (no INT8 node fits the budget)")
    chosen = set(result.chosen)
    entry = proto.metadata_props.add()
    entry.key = "katapool_int8_nodes"
    entry.value = json.dumps({
        "nodes": result.chosen, "budget_x_fp16_limits": result.budget,
        "units": [{"nodes": s.nodes, "alone_x_fp16_limits": round(s.ratio, 4)}
                  for s in sorted(result.sensitivities, key=lambda s: s.ratio)
                  if chosen.issuperset(s.nodes)],
        "selection_x_fp16_limits": round(picked.ratio, 4), "selection_p99": picked.errors,
        "stopped": result.stopped})
