#!/usr/bin/env python3
"""Quantization-aware fine-tuning (QAT) by distillation: can INT8 *trained for* its rounding
stay within KataGo's FP16 limits where post-training INT8 (docs/quantization.md) cannot?

    .venv/bin/python benchmarks/int8_qat.py [--net NET ...] [--activations int8 uint8]
        [--train-positions 480] [--epochs 12] [--lr 6e-5] [--units K ...] [--diagnose]
        [--equalize ALPHA] [--bench-seconds 4] [--cache DIR] [--save DIR] [--json OUT]

Needs PyTorch (CPU is enough: ``pip install -e '.[qat]'``); katapool itself does not.

Per network and activation form:

1. The static INT8 file ``katapool model quantize --int8`` makes (Q/DQ, the whole trunk's
   convolutions and products, percentile ranges from 64 calibration positions); with u8
   activations the weights are 7-bit, so AVX2's u8 x s8 pair sums cannot saturate.
   ``--units K``: only the K least sensitive units INT8, as ``--mixed`` ranks them (on
   ``--rank-positions`` calibration positions).
   ``--equalize ALPHA``: cross-layer equalization of the FP32 export first (``equalize``).
   ``--diagnose``: the error with only the weights, only the activations or one activation
   at a time rounded (the file in PyTorch), before training.
2. That exact graph runs in PyTorch with every Q/DQ pair as fake quantization (round to the
   file's own scales and zero points, straight-through gradients); the weights of the INT8
   nodes are kept in FP32 as trainable masters, rounded per output channel on every step as
   the file stores them. The FP32 export is the teacher: on ``--train-positions`` positions
   from ../shared/sgf, each under all 8 symmetries, the student learns the teacher's policy
   (KL), winrate, score lead and ownership, each over KataGo's FP16 limit for it, squared;
   the activation scales (LSQ) and the batch-norm constants around the INT8 nodes learn too.
   Training positions are never within 3 moves of a held-out position of the same game.
3. The trained values are written back into the same Q/DQ file (INT8 weights and their
   scales, activation scales, the affine constants), which is then judged as every INT8
   file is: against the engine's own outputs on the 200 held-out positions (p99 as a
   multiple of KataGo's FP16 limits), and timed against the FP32 export on ONNX Runtime CPU
   (paired median, batch 8).

The engine reference is the one int8_mixed_report.py keeps in --cache (made there if missing).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from int8_dynamic import BATCH, Judge, short, speed_text, timed
from int8_mixed_report import G170, SHARED, networks, reference
from pool_bench import machine
from torch_onnx_ops import torch_op

NEIGHBOURS = 3  # training positions keep this many moves away from any held-out position


def training_inputs(count: int, held_out: list[Any], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """The engine's input tensors for ``count`` positions away from the held-out ones."""
    from katapool.config.build import build_config
    from katapool.config.settings import Mode
    from katapool.engine.discovery import resolve_engine
    from katapool.engine.probe import probe_version
    from katapool.models.validate import engine_inputs_many, sample_positions, with_explicit_rules

    stored = cache / f"qat-train-{count}.npz"
    if stored.exists():
        with np.load(stored) as data:
            return data["spatial"], data["global_"]
    near = {(s.position.sgf.name, s.position.moves + d) for s in held_out
            for d in range(-NEIGHBOURS, NEIGHBOURS + 1)}
    info = probe_version(resolve_engine(None).path)
    games = sorted(SHARED.glob("sgf/*/*.sgf"))
    with tempfile.TemporaryDirectory(prefix="kp-qat-") as tmp:
        cfg = Path(tmp) / "gtp.cfg"
        cfg.write_text(build_config(mode=Mode.GTP, info=info, model=G170, preset="desktop").text)
        every = [p for p in sample_positions(with_explicit_rules(games, Path(tmp)), 10**9, seed=31)
                 if p.size == 19 and (p.sgf.name, p.moves) not in near]
        random.Random(31).shuffle(every)
        chosen = every[:count]
        spatial, global_ = [], []
        for i, (s, g) in enumerate(engine_inputs_many(info.path, cfg, G170, chosen, Path(tmp))):
            spatial.append(s.astype(np.uint8))
            global_.append(g)
            if i % 50 == 0:
                print(f"  training inputs {i + 1}/{count}", flush=True)
    out = np.concatenate(spatial), np.concatenate(global_)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(stored, spatial=out[0], global_=out[1])
    return out



# Each metric's weight in the loss is KataGo's FP16 limit for it (docs/quantization.md).
LIMITS = {"winrate": 0.02, "lead": 1.0, "policy_kl": 0.002, "ownership": 0.05}


class FakeQuantGraph:
    """A katapool Q/DQ file as a trainable PyTorch function: every QuantizeLinear ->
    DequantizeLinear pair rounds as ONNX Runtime will (the file's scale and zero point, half to
    even, clamped), with straight-through gradients; each INT8 weight is an FP32 master rounded
    per output channel on every call, as ``export`` will store it."""

    def __init__(self, qdq: Any, fp32: Any, learn_scales: bool = True) -> None:
        import torch
        from onnx import numpy_helper

        self.torch, self.qdq = torch, qdq
        self.round_weights = self.round_activations = True  # off: to see where error comes from
        self.only: set[str] | None = None  # round only these activations (None: all)
        floats = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
        self.consts: dict[str, Any] = {}
        self.masters: dict[str, Any] = {}  # "<w>_quantized" -> trainable FP32 weight
        self.levels: dict[str, int] = {}  # "<w>_quantized" -> largest integer level (127 or 64)
        readers: dict[str, list[Any]] = {}
        for node in qdq.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        for init in qdq.graph.initializer:
            value = numpy_helper.to_array(init)
            base = init.name.removesuffix("_quantized")
            if init.name.endswith("_quantized") and base in floats and value.dtype == np.int8:
                self.masters[init.name] = torch.nn.Parameter(torch.from_numpy(floats[base].copy()))
                self.levels[init.name] = int(np.abs(value).max())
            else:
                self.consts[init.name] = torch.from_numpy(value.copy())
        # Also trainable: the per-channel affine constants around the INT8 nodes (the folded
        # batch norms), which can move ranges between channels as the rounding needs.
        self.affine = {name: torch.nn.Parameter(t.float()) for name, t in self.consts.items()
                       if t.dtype == torch.float32 and t.dim() == 4 and t.shape[1] > 1
                       and all(r.op_type in ("Mul", "Add") and not r.name.startswith("mask/")
                               for r in readers.get(name, []))}
        self.consts.update(self.affine)
        # Activation scales learn too (LSQ, Esser et al. 2020): the range that rounds best is
        # rarely the calibrated one. Q and DQ of one tensor share one scale initializer.
        act_scales = {node.input[1] for node in qdq.graph.node if node.op_type == "QuantizeLinear"}
        self.scales = {name: torch.nn.Parameter(self.consts[name].float().clone())
                       for name in act_scales if name in self.consts} if learn_scales else {}
        self.consts.update(self.scales)

    def parameters(self) -> list[Any]:
        return [*self.masters.values(), *self.affine.values()]

    def scale_parameters(self) -> list[Any]:
        return list(self.scales.values())

    def _weight(self, name: str) -> Any:
        torch = self.torch
        w = self.masters[name]
        if not self.round_weights:
            return w
        q = self.levels[name]
        scale = (w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / q
                 ).clamp_min(1e-12)
        if w.dim() == 2:  # MatMul weights [in, out]: one scale per output column
            scale = (w.detach().abs().amax(dim=0, keepdim=True) / q).clamp_min(1e-12)
        return _ste_round(torch, w / scale).clamp(-q, q) * scale

    def __call__(self, feeds: dict[str, Any]) -> dict[str, Any]:
        env: dict[str, Any] = dict(self.consts)
        env.update(feeds)
        for node in self.qdq.graph.node:
            attrs = {a.name: (a.i if a.type == 2 else list(a.ints) if a.type == 7 else a.f)
                     for a in node.attribute}
            if node.op_type == "DequantizeLinear" and node.input[0] in self.masters:
                env[node.output[0]] = self._weight(node.input[0])
                continue
            args: list[Any] = [env[i] if i else None for i in node.input]
            if node.op_type == "QuantizeLinear" and self.only is not None \
                    and node.input[0] not in self.only:
                env[node.output[0]] = args[0] / args[1] + args[2].float()
                continue
            env[node.output[0]] = self._op(node.op_type, args, attrs)
        return {o.name: env[o.name] for o in self.qdq.graph.output}

    def _op(self, op: str, a: list[Any], at: dict[str, Any]) -> Any:
        torch = self.torch
        if op == "QuantizeLinear":  # kept in float: the integer levels, as ONNX Runtime rounds
            if not self.round_activations:
                return a[0] / a[1] + a[2].float()
            zero = a[2].float()
            lo, hi = (-128, 127) if a[2].dtype == torch.int8 else (0, 255)
            scale = a[1]
            if scale.requires_grad:  # LSQ's gradient scale: 1 / sqrt(elements x levels)
                g = 1.0 / float(np.sqrt(a[0].numel() / a[0].shape[0] * hi))
                scale = scale * g + (scale - scale * g).detach()
            return (_ste_round(torch, a[0] / scale) + zero).clamp(lo, hi)
        if op == "DequantizeLinear":
            return (a[0] - a[2].float()) * a[1]
        return torch_op(op, a, at)


def _ste_round(torch: Any, x: Any) -> Any:
    return x + (torch.round(x) - x).detach()


def export(graph: FakeQuantGraph) -> Any:
    """The Q/DQ file with the trained weights: INT8 weights and their per-channel scales,
    the trained affine constants, and each quantized bias again at input x weight scale."""
    import copy

    from onnx import numpy_helper

    out = copy.deepcopy(graph.qdq)
    values: dict[str, np.ndarray] = {}
    for name, w in graph.masters.items():
        q = graph.levels[name]
        arr = w.detach().numpy().astype(np.float32)
        axes = tuple(range(1, arr.ndim)) if arr.ndim != 2 else (0,)
        scale = np.maximum(np.abs(arr).max(axis=axes, keepdims=True) / q, 1e-12).astype(np.float32)
        values[name] = np.clip(np.round(arr / scale), -q, q).astype(np.int8)
        values[name.removesuffix("_quantized") + "_scale"] = scale.reshape(-1)
    for name, t in [*graph.affine.items(), *graph.scales.items()]:
        values[name] = t.detach().numpy().astype(np.float32)
    for init in out.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].astype(
                numpy_helper.to_array(init).dtype), init.name))
    return out


def symmetric(torch: Any, x: Any, sym: int) -> Any:
    if sym & 1:
        x = x.flip(-2)
    if sym & 2:
        x = x.flip(-1)
    if sym & 4:
        x = x.transpose(-1, -2)
    return x


def distill_loss(torch: Any, got: dict[str, Any], want: dict[str, Any], lead_scale: float,
                 board: Any) -> Any:
    """Errors in KataGo's terms, each over its FP16 limit, squared and averaged."""
    f = torch.nn.functional
    n = got["OutputPolicy"].shape[0]

    def policy(out: dict[str, Any]) -> Any:
        logits = torch.cat([out["OutputPolicy"].reshape(n, -1), out["OutputPolicyPass"]], dim=1)
        return logits.masked_fill(~board, -1e4)

    lp_s, lp_t = f.log_softmax(policy(got), 1), f.log_softmax(policy(want), 1)
    kl = (lp_t.exp() * (lp_t - lp_s)).sum(1)
    v_s, v_t = torch.softmax(got["OutputValue"], 1), torch.softmax(want["OutputValue"], 1)
    win = (v_s[:, 0] - v_t[:, 0]) / LIMITS["winrate"]
    lead = (got["OutputScoreValue"][:, 2] - want["OutputScoreValue"][:, 2]) * lead_scale \
        / LIMITS["lead"]
    own = (torch.tanh(got["OutputOwnership"]) - torch.tanh(want["OutputOwnership"])
           ).reshape(n, -1).abs().amax(1) / LIMITS["ownership"]
    terms = {"policy_kl": kl / LIMITS["policy_kl"], "winrate": win.abs(), "lead": lead.abs(),
             "ownership": own}
    # squares: a position twice over the limit costs four times, as p99 cares about the tail
    total = sum((t ** 2).mean() for k, t in terms.items() if k != "ownership") \
        + 0.1 * (terms["ownership"] ** 2).mean()
    return total, {k: float(t.detach().abs().max()) for k, t in terms.items()}


def teacher_outputs(fp32: Any, spatial: np.ndarray, global_: np.ndarray) -> dict[str, np.ndarray]:
    """The FP32 export on every training input under all 8 symmetries (ONNX Runtime: the
    export matches the engine to about 1e-6)."""
    from katapool.models.symmetry import apply_symmetry
    from katapool.models.validate import onnx_session

    session = onnx_session(fp32.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    outs: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for sym in range(8):
        sp = apply_symmetry(spatial.astype(np.float32), sym)
        for start in range(0, len(sp), 64):
            got = session.run(None, {"InputSpatial": sp[start:start + 64],
                                     "InputGlobal": global_[start:start + 64]})
            for k, v in zip(names, got, strict=True):
                outs[k].append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}  # [sym * N + i]


def train(graph: FakeQuantGraph, model: Any, spatial: np.ndarray, global_: np.ndarray,
          teacher: dict[str, np.ndarray], epochs: int, batch: int, lr: float,
          log: Any) -> list[dict[str, Any]]:
    import torch

    torch.manual_seed(5)
    n = len(spatial)
    sp = torch.from_numpy(spatial.astype(np.float32))
    gl = torch.from_numpy(global_.astype(np.float32))
    want_all = {k: torch.from_numpy(v) for k, v in teacher.items()}
    opt = torch.optim.Adam([*graph.parameters(), *graph.scale_parameters()], lr=lr)
    steps = epochs * (8 * n // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history = []
    step = 0
    began = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(8 * n)
        worst: dict[str, float] = {}
        total = 0.0
        for start in range(0, 8 * n - batch + 1, batch):
            idx = order[start:start + batch]
            sym, pos = idx // n, idx % n
            x = torch.stack([symmetric(torch, sp[p], int(s)) for p, s in zip(pos, sym, strict=True)])
            want = {k: v[idx] for k, v in want_all.items()}
            got = graph({"InputSpatial": x, "InputGlobal": gl[pos]})
            board = torch.cat([x[:, 0].reshape(len(idx), -1) > 0,
                               torch.ones(len(idx), 1, dtype=torch.bool)], 1)
            loss, big = distill_loss(torch, got, want, model.postprocess[3], board)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach())
            for k, v in big.items():
                worst[k] = max(worst.get(k, 0.0), v)
        history.append({"epoch": epoch + 1, "loss": total / max(1, step // (epoch + 1)),
                        "worst": worst, "seconds": time.perf_counter() - began})
        log(f"epoch {epoch + 1}/{epochs}: mean loss {history[-1]['loss']:.3g}, worst x limits "
            + ", ".join(f"{k} {v:.2f}" for k, v in worst.items())
            + f" ({history[-1]['seconds']:.0f} s)")
    return history


def channel_ranges(proto: Any, tensors: list[str], feeds: list[dict[str, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """max |x| per channel of each named tensor of the FP32 graph, over the feeds."""
    import copy

    import onnx
    import onnxruntime as ort

    probe = copy.deepcopy(proto)
    known = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(None, feed), strict=True):
            if name in tensors:
                axes = tuple(i for i in range(value.ndim) if i != 1)
                m = np.abs(value).max(axis=axes)
                out[name] = np.maximum(out.get(name, m), m)
    return out


def equalize(proto: Any, feeds: list[dict[str, np.ndarray]], alpha: float,
             limit: float = 64.0) -> tuple[Any, int]:
    """Cross-layer equalization (Nagel et al. 2019) of the tensors INT8 rounds with one scale:
    the same function, with each channel's range moved towards the tensor's largest.

    - a convolution's input ``mask * relu(x * a + b)``: channel k times s_k in ``a`` and ``b``
      (positive scales pass through ReLU and the mask), divided out of the input channel k of
      every convolution reading it; s_k = (R / r_k) ** alpha (the weights pay the rest);
    - a convolution's output read only by ``* a``: output channel k of the weights times t_k
      and ``a`` divided by it; t_k = R / r_k (per-channel weight scales make that free).
    Returns the new graph and how many tensors were equalized."""
    import copy

    from onnx import numpy_helper

    out = copy.deepcopy(proto)
    g = out.graph
    from katapool.models.quantize import int8_candidates

    candidates = set(int8_candidates(out))
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def const(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).copy()

    def put(node: Any, index: int, value: np.ndarray) -> None:
        """Give ``node`` its own copy of input ``index`` with ``value`` (constants are shared)."""
        name = f"{node.input[index]}_eq_{node.name.replace('/', '_')}"
        init = numpy_helper.from_array(value.astype(np.float32), name)
        g.initializer.append(init)
        inits[name] = init
        node.input[index] = name

    plans: list[tuple[str, Any]] = []
    # inputs: Mul(mask) <- Relu <- Add(b) <- Mul(a), read only by candidate convolutions
    for n in g.node:
        if n.op_type != "Mul" or n.output[0] not in readers:
            continue
        convs = readers[n.output[0]]
        if not all(r.op_type == "Conv" and r.name in candidates for r in convs):
            continue
        relu = producer.get(n.input[0])
        add = producer.get(relu.input[0]) if relu is not None and relu.op_type == "Relu" else None
        mul = producer.get(add.input[0]) if add is not None and add.op_type == "Add" else None
        if relu is None or add is None or mul is None or mul.op_type != "Mul" \
                or add.input[1] not in inits or mul.input[1] not in inits \
                or len(readers[relu.output[0]]) != 1:
            continue
        plans.append(("in", (n.output[0], convs, add, mul)))
    # outputs: a candidate Conv read only by one Mul with a per-channel constant
    for n in g.node:
        if n.op_type != "Conv" or n.name not in candidates:
            continue
        rs = readers.get(n.output[0], [])
        if len(rs) == 1 and rs[0].op_type == "Mul" and rs[0].input[1] in inits \
                and const(rs[0].input[1]).size > 1:
            plans.append(("out", (n.output[0], n, rs[0])))
    ranges = channel_ranges(proto, [t for _, (t, *_) in plans], feeds)
    done = 0
    for kind, plan in plans:
        r = np.maximum(ranges[plan[0]], 1e-6)
        if kind == "in":
            _, convs, add, mul = plan
            s = np.clip((r.max() / r) ** alpha, 1.0, limit).astype(np.float32)
            shape = (1, -1, 1, 1)
            put(mul, 1, np.broadcast_to(const(mul.input[1]), (1, len(s), 1, 1)) * s.reshape(shape))
            put(add, 1, np.broadcast_to(const(add.input[1]), (1, len(s), 1, 1)) * s.reshape(shape))
            for conv in convs:
                put(conv, 1, const(conv.input[1]) / s.reshape(1, -1, 1, 1))
        else:
            _, conv, mul = plan
            t = np.clip(r.max() / r, 1.0, limit).astype(np.float32)
            put(conv, 1, const(conv.input[1]) * t.reshape(-1, 1, 1, 1))
            put(mul, 1, np.broadcast_to(const(mul.input[1]), (1, len(t), 1, 1)) / t.reshape(1, -1, 1, 1))
        done += 1
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out, done


def torch_held_out(graph: FakeQuantGraph, model: Any, samples: list[Any]) -> Any:
    """The fake-quantized graph's report against the engine on ``samples`` (as ONNX Runtime's
    would be, up to its fused kernels' rounding)."""
    import torch

    from katapool.models.validate import FP16_LIMITS, compare, postprocess

    evals = []
    with torch.no_grad():
        for start in range(0, len(samples), 50):
            chunk = samples[start:start + 50]
            feeds = {"InputSpatial": torch.from_numpy(np.concatenate(
                [s.spatial for s in chunk]).astype(np.float32)),
                     "InputGlobal": torch.from_numpy(np.concatenate([s.global_ for s in chunk]))}
            out = {k: v.numpy() for k, v in graph(feeds).items()}
            for i, s in enumerate(chunk):
                evals.append(postprocess(model, {k: v[i:i + 1] for k, v in out.items()},
                                         s.position.black_to_move, ~np.isnan(s.engine.policy),
                                         s.global_[0]))
    return compare(evals, [s.engine for s in samples], FP16_LIMITS)


def where_error_comes_from(graph: FakeQuantGraph, model: Any, samples: list[Any]
                           ) -> dict[str, float]:
    """Error (x KataGo's FP16 limits, p99) with only the weights rounded, only the
    activations, and each quantized activation alone (weights FP32)."""
    from katapool.models.int8_mixed import limit_ratio

    producer = {o: n for n in graph.qdq.graph.node for o in n.output}
    tensors = [n.input[0] for n in graph.qdq.graph.node if n.op_type == "QuantizeLinear"]
    trials: dict[str, tuple[bool, bool, set[str] | None]] = {
        "weights only": (True, False, None), "activations only": (False, True, None),
        "all": (True, True, None)}
    trials.update({f"{t} ({producer[t].name})": (False, True, {t}) for t in tensors})
    out = {}
    for label, (w, a, only) in trials.items():
        graph.round_weights, graph.round_activations, graph.only = w, a, only
        out[label] = limit_ratio(torch_held_out(graph, model, samples))
    graph.round_weights, graph.round_activations, graph.only = True, True, None
    return out


def unit_order(model: Any, fp32: Any, feeds: list[dict[str, np.ndarray]], data: dict[str, Any],
               acts: str, positions: int = 32) -> list[list[str]]:
    """The units (nodes reading one activation), least sensitive first, as ``--mixed`` ranks
    them: each alone INT8, its error on ``positions`` calibration positions (``--mixed``: 32)."""
    from katapool.models.int8_mixed import MixedSearch, search
    from katapool.models.quantize import Int8Options

    result = search(MixedSearch(model, fp32, feeds, data["calibration"],
                                Int8Options(activations=acts, reduce_range=acts == "uint8"),
                                ranking_positions=positions))
    return [s.nodes for s in sorted(result.sensitivities, key=lambda s: s.ratio)]


def one(net: Path, acts: str, spatial: np.ndarray, global_: np.ndarray,
        args: argparse.Namespace, units: int | None = None,
        order: list[list[str]] | None = None) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import torch

    from katapool.models import load_model
    from katapool.models.export_onnx import export_onnx
    from katapool.models.quantize import Int8Options, to_int8
    from katapool.models.symmetry import apply_symmetry
    from katapool.models.validate import feeds_for, onnx_session

    model = load_model(net)
    name = f"{short(model.name)} {acts}" + (f" {units} units" if units is not None else "")

    def log(text: str) -> None:
        print(f"  {name}: {text}", flush=True)

    data = reference(net, 200, 96, args.cache)
    judge = Judge(model, data)
    fp32 = export_onnx(model)
    fp32_bytes = fp32.SerializeToString()
    session = onnx_session(fp32_bytes)
    feeds = [feeds_for(session, model, apply_symmetry(s.spatial, i % 8), s.global_)
             for i, s in enumerate(data["calibration"][:64])]
    if args.equalize is not None:  # the same function: the FP32 file stays the reference
        fp32, count = equalize(fp32, feeds, args.equalize)
        log(f"equalized {count} tensors (alpha {args.equalize}); FP32 held out "
            f"{judge.held_out(fp32.SerializeToString())['ratio']:.2f}x limits")
    include = None
    if units is not None:
        order = order or unit_order(model, fp32, feeds, data, acts, args.rank_positions)
        include = [node for unit in order[:units] for node in unit]
    qdq = to_int8(fp32, feeds, Int8Options(activations=acts, reduce_range=acts == "uint8"),
                  include=include)
    static_bytes = qdq.SerializeToString()
    row: dict[str, Any] = {"network": model.name, "activations": acts, "units": units,
                           "unit_order": order, "train_positions": len(spatial),
                           "epochs": args.epochs, "lr": args.lr, "batch": args.batch,
                           "int8_nodes": sum(n.op_type in ("Conv", "MatMul") and any(
                               i.endswith("DequantizeLinear_Output") for i in n.input)
                               for n in qdq.graph.node)}
    row["static"] = judge.held_out(static_bytes)
    log(f"static INT8 ({row['int8_nodes']} nodes): held out {row['static']['ratio']:.2f}x limits")
    graph = FakeQuantGraph(qdq, fp32)
    # the PyTorch graph must be the file: compare with ONNX Runtime before training
    probe = {"InputSpatial": spatial[:16].astype(np.float32), "InputGlobal": global_[:16]}
    with torch.no_grad():
        mine = graph({k: torch.from_numpy(v) for k, v in probe.items()})
    theirs = ort.InferenceSession(static_bytes, providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in theirs.get_outputs()], theirs.run(None, probe), strict=True))
    gap = max(float(np.abs(mine[k].numpy() - out[k]).max()) for k in out)
    log(f"PyTorch fake-quant vs ONNX Runtime on the static file: max output difference {gap:.3g}")
    row["fake_quant_gap"] = gap
    if args.diagnose:
        row["error_sources"] = where_error_comes_from(graph, model, data["validation"])
        log("held out x limits, fake-quantized in PyTorch: " + "; ".join(
            f"{k} {v:.2f}" for k, v in row["error_sources"].items()))
    if args.epochs == 0:
        return row
    teacher = teacher_outputs(fp32, spatial, global_)
    log(f"{len(graph.masters)} INT8 weights and {len(graph.affine)} affine constants trained "
        f"on {len(spatial)} positions x 8 symmetries")
    row["history"] = train(graph, model, spatial, global_, teacher, args.epochs, args.batch,
                           args.lr, log)
    trained = export(graph)
    trained_bytes = trained.SerializeToString()
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        onnx.save(trained, str(args.save / f"{model.name}-{acts}-qat.onnx"))
    row["qat"] = judge.held_out(trained_bytes)
    log(f"QAT INT8: held out {row['qat']['ratio']:.2f}x limits {row['qat']['p99']}")
    row["speed"] = timed(fp32_bytes, trained_bytes, args.bench_seconds)
    log(f"speed / FP32: {speed_text(row['speed'])}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", type=Path, nargs="*", help="default: the four test networks")
    ap.add_argument("--activations", nargs="+", default=["int8", "uint8"])
    ap.add_argument("--train-positions", type=int, default=480)
    ap.add_argument("--epochs", type=int, default=12, help="0: judge the static file only")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=6e-5, help="Adam's peak (1e-3 and 2e-4 "
                    "diverged on g170)")
    ap.add_argument("--equalize", type=float, help="cross-layer equalization, this alpha")
    ap.add_argument("--bench-seconds", type=float, default=4.0)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kp-mixed-ref")
    ap.add_argument("--save", type=Path, help="keep the trained files in this folder")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--units", type=int, nargs="*", help="mixed: QAT on files with this many "
                    "units INT8, least sensitive first (default: the whole trunk)")
    ap.add_argument("--rank-positions", type=int, default=32, help="with --units: calibration "
                    "positions that rank the units (--mixed uses 32)")
    ap.add_argument("--diagnose", action="store_true", help="before training: the error with "
                    "only weights / only activations rounded, and each activation alone")
    ap.add_argument("--data-only", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}; batch {BATCH} for timing", flush=True)
    held = reference(G170, 200, 96, args.cache)["validation"]
    spatial, global_ = training_inputs(args.train_positions, held, args.cache)
    print(f"training inputs: {len(spatial)} positions", flush=True)
    if args.data_only:
        return
    rows = []
    for net in args.net or networks():
        for acts in args.activations:
            order = None
            for units in args.units or [None]:
                rows.append(one(net, acts, spatial, global_, args, units, order))
                order = rows[-1].get("unit_order")
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
