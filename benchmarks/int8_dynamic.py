#!/usr/bin/env python3
"""Dynamic INT8 on ONNX Runtime CPU: activations quantized on every run from their own
min/max (``onnxruntime.quantization.quantize_dynamic``: ConvInteger, MatMulInteger, fused to
DynamicQuantizeMatMul), so no calibration range clips them. Can it give, for a network, a file
within KataGo's FP16 limits that is faster than the FP32 export?

    .venv/bin/python benchmarks/int8_dynamic.py [--net NET ...] [--forms mm-s8 mm-u8 ...]
        [--mixed-form mm-u8] [--budget 0.5 1.0] [--no-mixed] [--accuracy-always] [--bench-seconds 4]
        [--cache DIR] [--json OUT.json]

Per network:

1. **Speed ceiling**: each form quantizes every candidate (the trunk's convolutions and matrix
   products with weights, as for static INT8) of its operator types; it is timed against the
   FP32 export on ONNX Runtime CPU at batch 8, alternating 4 s runs (``ort_speed``), twice,
   and in a paired run (one batch each in turn, so the load of a shared machine falls on both
   alike; its median decides, single rounds swing too much here). A form not faster than FP32
   whole cannot be faster in part: it stops there. ``--threads 1`` times on one core.
2. **Accuracy** of each faster form on the held-out validation positions, as a multiple of
   KataGo's FP16 limits (p99 of winrate, score lead, top-move policy, policy KL).
3. **Mixed**, for ``--mixed-form`` when it is faster whole but over the limits: each unit
   (the nodes reading one activation) quantized alone, ranked by its error on 32 calibration
   positions; units go INT8 least sensitive first, the curve at eighths then bisection on all
   96 calibration positions for each ``--budget``; each chosen file on the held-out positions
   and timed like step 1.

``mm-block8`` and ``mm-row8`` are not ``quantize_dynamic``: each product becomes ONNX Runtime's
MatMulNBits (8-bit weights per 32 inputs, activations quantized per row and 32 inputs on every
run), or a per-row QuantizeLinear, MatMulInteger and the scales applied to its int32 result.
``--accuracy-always`` judges (and searches) a form even when it is slower than FP32.

Evaluations run 8 positions per batch, as timed: a dynamic range covers the whole batch.
Uses the engine reference int8_mixed_report.py keeps in --cache (made there if missing).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from int8_mixed_report import SHORT, networks, reference
from pool_bench import machine

BATCH = 8
FORMS: dict[str, dict[str, Any]] = {
    # s8 weights per output channel: MatMul's usual dynamic form on x86
    "mm-s8": {"ops": ["MatMul"], "weights": "int8", "per_channel": True},
    # the same with 7-bit weights (ONNX Runtime's advice where AVX2's u8 x s8 product saturates)
    "mm-s8-7bit": {"ops": ["MatMul"], "weights": "int8", "per_channel": True, "reduce_range": True},
    "mm-u8": {"ops": ["MatMul"], "weights": "uint8", "per_channel": False},
    # ConvInteger: u8 weights (s8 weights measured 3x slower still on this CPU)
    "conv+mm-u8": {"ops": ["Conv", "MatMul"], "weights": "uint8", "per_channel": False},
    # block-wise: ONNX Runtime's MatMulNBits, 8-bit weights with a scale per 32 inputs, and
    # accuracy level 4 = the activations quantized to INT8 per row and per block of 32 inputs
    # on every run (an integer product), so neither a position's nor a channel group's range
    # sets another's resolution, as one scale per tensor does
    "mm-block8": {"ops": ["MatMul"], "blockwise": {"bits": 8, "block": 32, "accuracy_level": 4}},
    # one scale per row (board point of one position) from standard operators: QuantizeLinear
    # per row, MatMulInteger, the scales applied to its int32 result
    "mm-row8": {"ops": ["MatMul"], "per_row": True},
}


def short(network: str) -> str:
    return next((v for k, v in SHORT.items() if network.startswith(k)), network)


def candidates(proto: Any, ops: Sequence[str]) -> list[str]:
    from katapool.models.quantize import int8_candidates

    kinds = {n.name: n.op_type for n in proto.graph.node}
    return [name for name in int8_candidates(proto) if kinds[name] in ops]


def dynamic(proto: Any, form: dict[str, Any], nodes: Sequence[str]) -> bytes:
    """The FP32 export with ``nodes`` dynamically quantized (the FP32 bytes when none)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not nodes:
        return bytes(proto.SerializeToString())
    if "blockwise" in form:
        return blockwise(proto, nodes, **form["blockwise"])
    if form.get("per_row"):
        return per_row(proto, nodes)
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process, once a trial
    with tempfile.TemporaryDirectory(prefix="kp-dyn-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "dyn.onnx"
        onnx.save(proto, str(src))
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=form["ops"],
                         per_channel=form["per_channel"],
                         reduce_range=form.get("reduce_range", False),
                         weight_type=QuantType.QInt8 if form["weights"] == "int8"
                         else QuantType.QUInt8,
                         nodes_to_quantize=list(nodes))
        return dst.read_bytes()


def blockwise(proto: Any, nodes: Sequence[str], bits: int, block: int,
              accuracy_level: int) -> bytes:
    """``nodes`` (MatMuls by a constant weight) as MatMulNBits: weights symmetric per output
    column and block of ``block`` inputs, stored with ONNX Runtime's default zero point."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    weights = {t.name: t for t in model.graph.initializer}
    wanted = set(nodes)
    half = 2 ** (bits - 1)
    for i, node in enumerate(model.graph.node):
        if node.name not in wanted or node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)  # K x N
        k, n = w.shape
        blocks = -(-k // block)
        padded = np.zeros((blocks * block, n), np.float32)
        padded[:k] = w
        cols = padded.T.reshape(n, blocks, block)
        scale = np.abs(cols).max(-1) / (half - 1)
        scale[scale == 0] = 1.0
        q = np.clip(np.round(cols / scale[..., None]), -half, half - 1).astype(np.int32) + half
        packed = q.astype(np.uint8) if bits == 8 else (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        model.graph.initializer.extend([
            numpy_helper.from_array(packed, f"{node.name}.nbits"),
            numpy_helper.from_array(scale.astype(np.float32).reshape(-1), f"{node.name}.nbits_scale")])
        replaced = helper.make_node(
            "MatMulNBits", [node.input[0], f"{node.name}.nbits", f"{node.name}.nbits_scale"],
            list(node.output), name=node.name, domain="com.microsoft", K=k, N=n, bits=bits,
            block_size=block, accuracy_level=accuracy_level)
        model.graph.node.remove(node)
        model.graph.node.insert(i, replaced)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    used = {name for node in model.graph.node for name in node.input}
    unused = [t for t in model.graph.initializer if t.name not in used]
    for t in unused:
        model.graph.initializer.remove(t)
    return bytes(model.SerializeToString())


def per_row(proto: Any, nodes: Sequence[str]) -> bytes:
    """``nodes`` (MatMuls by a constant weight) with their input quantized to u8 per row
    (symmetric around 128: ONNX Runtime's MatMulInteger takes no per-row zero point) on every
    run, u8 weights per output column (also around 128), integer product, float scales after."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    weights = {t.name: t for t in model.graph.initializer}
    consts = {"kp_row.last": np.array([-1], np.int64), "kp_row.c127": np.array(127, np.float32),
              "kp_row.tiny": np.array(1e-12, np.float32), "kp_row.z": np.array(128, np.uint8),
              "kp_row.zero": np.array(0, np.float32), "kp_row.c128": np.array(128, np.float32),
              "kp_row.head": np.array([0], np.int64)}
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    wanted = set(nodes)
    for i, node in reversed(list(enumerate(model.graph.node))):
        if node.name not in wanted or node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        k, n = w.shape
        wscale = np.abs(w).max(0) / 127
        wscale[wscale == 0] = 1.0
        p = node.name + ".row"
        model.graph.initializer.extend([
            numpy_helper.from_array((np.round(w / wscale) + 128).astype(np.uint8), p + ".wq"),
            numpy_helper.from_array(wscale.astype(np.float32), p + ".wscale"),
            numpy_helper.from_array(np.array([-1, k], np.int64), p + ".flat2"),
            numpy_helper.from_array(np.array([n], np.int64), p + ".n")])
        a, y = node.input[0], node.output[0]
        new = [
            helper.make_node("Reshape", [a, p + ".flat2"], [p + ".a2"]),
            helper.make_node("Abs", [p + ".a2"], [p + ".abs"]),
            helper.make_node("ReduceMax", [p + ".abs"], [p + ".top"], axes=[-1], keepdims=1),
            helper.make_node("Div", [p + ".top", "kp_row.c127"], [p + ".s0"]),
            helper.make_node("Max", [p + ".s0", "kp_row.tiny"], [p + ".s"]),
            helper.make_node("Reshape", [p + ".s", "kp_row.last"], [p + ".s1"]),
            helper.make_node("Mul", [p + ".s1", "kp_row.zero"], [p + ".z0"]),
            helper.make_node("Add", [p + ".z0", "kp_row.c128"], [p + ".z1"]),
            helper.make_node("Cast", [p + ".z1"], [p + ".zrows"], to=TensorProto.UINT8),
            helper.make_node("QuantizeLinear", [p + ".a2", p + ".s1", p + ".zrows"], [p + ".aq"],
                             axis=0),
            helper.make_node("MatMulInteger", [p + ".aq", p + ".wq", "kp_row.z", "kp_row.z"],
                             [p + ".yi"]),
            helper.make_node("Cast", [p + ".yi"], [p + ".yf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + ".yf", p + ".s"], [p + ".y1"]),
            helper.make_node("Mul", [p + ".y1", p + ".wscale"], [p + ".y2"]),
            helper.make_node("Shape", [a], [p + ".shape"]),
            helper.make_node("Slice", [p + ".shape", "kp_row.head", "kp_row.last"], [p + ".lead"]),
            helper.make_node("Concat", [p + ".lead", p + ".n"], [p + ".outshape"], axis=0),
            helper.make_node("Reshape", [p + ".y2", p + ".outshape"], [y], name=node.name)]
        model.graph.node.remove(node)
        for j, extra in enumerate(new):
            model.graph.node.insert(i + j, extra)
    used = {name for node in model.graph.node for name in node.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)
    return bytes(model.SerializeToString())


def optimized_ops(onnx_bytes: bytes) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime actually runs (after its fusions)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="kp-dyn-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    wanted = ("Conv", "FusedConv", "ConvInteger", "MatMul", "FusedMatMul", "MatMulInteger",
              "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLinear",
              "MatMulNBits")
    counts = collections.Counter(n.op_type for n in graph.node)
    return {k: counts[k] for k in wanted if counts[k]}


def session(onnx_bytes: bytes, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # timed in turn with another session: idle threads must not spin on the cores it needs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def paired(fp32: bytes, other: bytes, seconds: float, threads: int | None = None) -> float:
    """Speed of ``other`` over FP32, one batch of each in turn: the median of the pairs."""
    from katapool.models.speed import synthetic_feeds

    a, b = session(fp32, threads), session(other, threads)
    feeds = synthetic_feeds(a, BATCH)
    for _ in range(2):
        a.run(None, feeds)
        b.run(None, feeds)
    ratios: list[float] = []
    began = time.perf_counter()
    while len(ratios) < 5 or time.perf_counter() - began < seconds:
        t0 = time.perf_counter()
        a.run(None, feeds)
        t1 = time.perf_counter()
        b.run(None, feeds)
        ratios.append((t1 - t0) / (time.perf_counter() - t1))
    return statistics.median(ratios)


def timed(fp32: bytes, other: bytes, seconds: float, threads: int | None = None) -> dict[str, Any]:
    """Alternating ``ort_speed`` runs, twice, and a paired run; ratios are other / FP32."""
    from katapool.models.speed import ort_speed

    rounds = []
    for _ in range(2):
        f = ort_speed(fp32, BATCH, seconds, threads=threads).evals_per_second
        o = ort_speed(other, BATCH, seconds, threads=threads).evals_per_second
        rounds.append({"fp32": f, "int8": o, "ratio": o / f})
    return {"rounds": rounds, "paired_ratio": paired(fp32, other, seconds, threads)}


def faster(speed: dict[str, Any]) -> bool:
    """The paired median decides: with a test suite beside it, this 2-core machine moved single
    4 s rounds by up to 2x (b10c384: rounds 0.48 and 0.61 against paired 1.19)."""
    return bool(speed["paired_ratio"] > 1.0)


def speed_text(speed: dict[str, Any]) -> str:
    rounds = " / ".join(f"{r['ratio']:.2f}" for r in speed["rounds"])
    return f"{rounds} (paired {speed['paired_ratio']:.2f})"


class Judge:
    """Errors of an ONNX file against the engine, as a multiple of KataGo's FP16 limits."""

    def __init__(self, model: Any, data: dict[str, Any]) -> None:
        self.model, self.data = model, data

    def report(self, onnx_bytes: bytes, samples: Sequence[Any]) -> Any:
        from katapool.models.int8_mixed import cpu_session
        from katapool.models.validate import FP16_LIMITS, compare, session_evals

        evals = session_evals(self.model, cpu_session(onnx_bytes), list(samples), batch=BATCH)
        return compare(evals, [s.engine for s in samples], FP16_LIMITS)

    def held_out(self, onnx_bytes: bytes) -> dict[str, Any]:
        from katapool.models.int8_mixed import METRICS, limit_ratio

        report = self.report(onnx_bytes, self.data["validation"])
        return {"ratio": limit_ratio(report), "p99": {k: report.errors[k]["p99"] for k in METRICS}}

    def selection(self, onnx_bytes: bytes, positions: int | None = None) -> float:
        from katapool.models.int8_mixed import limit_ratio

        return limit_ratio(self.report(onnx_bytes, self.data["calibration"][:positions]))


def mixed(fp32: Any, form: dict[str, Any], judge: Judge, budgets: Sequence[float],
          seconds: float, threads: int | None, log: Any) -> dict[str, Any]:
    """Least sensitive units first; the largest count within each budget on the calibration
    positions, then that file on the held-out ones."""
    from katapool.models.int8_mixed import units

    fp32_bytes = fp32.SerializeToString()
    groups = units(fp32, candidates(fp32, form["ops"]))
    sensitivities = []
    for i, unit in enumerate(groups):
        sensitivities.append((judge.selection(dynamic(fp32, form, unit), 32), unit))
        if i % 10 == 0:
            log(f"sensitivity {i + 1}/{len(groups)}")
    sensitivities.sort(key=lambda s: s[0])
    order = [unit for _, unit in sensitivities]

    def first(k: int) -> list[str]:
        return [name for unit in order[:k] for name in unit]

    curve: dict[int, float] = {}

    def trial(k: int) -> float:
        if k not in curve:
            curve[k] = judge.selection(dynamic(fp32, form, first(k)))
            log(f"{k}/{len(order)} units ({len(first(k))} nodes): {curve[k]:.2f}x limits")
        return curve[k]

    n = len(order)
    steps = sorted({0, n, *(round(n * i / 8) for i in range(1, 8))})
    for k in steps:
        trial(k)
    points = []
    for budget in sorted(budgets):
        lo = max(k for k in steps if curve[k] <= budget) if any(
            curve[k] <= budget for k in steps) else 0
        hi = min((k for k in steps if k > lo and curve[k] > budget), default=None)
        while hi is not None and hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if trial(mid) <= budget else (lo, mid)
        best = max(k for k, r in curve.items() if r <= budget)
        if best == 0 or any(p["units"] == best for p in points):
            continue
        chosen = dynamic(fp32, form, first(best))
        points.append({"budget": budget, "units": best, "nodes": first(best),
                       "selection_ratio": curve[best], "held_out": judge.held_out(chosen),
                       "speed": timed(fp32_bytes, chosen, seconds, threads)})
        log(f"budget {budget:g}: {len(first(best))} nodes, held out "
            f"{points[-1]['held_out']['ratio']:.2f}x limits, speed {speed_text(points[-1]['speed'])}")
    return {"units": n, "sensitivities": [{"nodes": u, "ratio": r} for r, u in sensitivities],
            "curve": [{"units": k, "nodes": len(first(k)), "ratio": r}
                      for k, r in sorted(curve.items())], "points": points}


def one_network(net: Path, args: argparse.Namespace) -> dict[str, Any]:
    from katapool.models import load_model
    from katapool.models.export_onnx import export_onnx

    model = load_model(net)
    name = short(model.name)

    def log(text: str) -> None:
        print(f"  {name}: {text}", flush=True)

    judge = Judge(model, reference(net, 200, 96, args.cache))
    fp32 = export_onnx(model)
    fp32_bytes = fp32.SerializeToString()
    row: dict[str, Any] = {"network": model.name, "forms": {}}
    for label in args.forms:
        form = FORMS[label]
        nodes = candidates(fp32, form["ops"])
        if not nodes:
            continue
        whole = dynamic(fp32, form, nodes)
        entry: dict[str, Any] = {"nodes": len(nodes), "ops": optimized_ops(whole),
                                 "speed": timed(fp32_bytes, whole, args.bench_seconds, args.threads)}
        log(f"{label} whole ({len(nodes)} nodes): speed {speed_text(entry['speed'])}; "
            f"runs {entry['ops']}")
        if faster(entry["speed"]) or args.accuracy_always:
            entry["held_out"] = judge.held_out(whole)
            log(f"{label} whole: held out {entry['held_out']['ratio']:.2f}x limits "
                f"{entry['held_out']['p99']}")
        row["forms"][label] = entry
    chosen = row["forms"].get(args.mixed_form, {})
    if chosen.get("held_out", {}).get("ratio", 0.0) > 1.0 and not args.no_mixed:
        row["mixed_form"] = args.mixed_form
        row["mixed"] = mixed(fp32, FORMS[args.mixed_form], judge, args.budget, args.bench_seconds,
                             args.threads, log)
    return row


def table(rows: list[dict[str, Any]]) -> None:
    print("\n| network | form | INT8 nodes | speed / FP32: rounds (paired) | held out × FP16 limits "
          "| winrate p99 | lead p99 | top policy p99 | policy KL p99 |")
    print("|---|---|---|---|---|---|---|---|---|")

    def line(net: str, form: str, nodes: str, speed: dict[str, Any], held: dict[str, Any] | None) -> None:
        acc = (f"{held['ratio']:.2f} | " + " | ".join(f"{held['p99'][k]:.2g}" for k in
               ("winrate", "lead", "top_policy", "policy_kl"))) if held else "— | | | |"
        print(f"| {net} | {form} | {nodes} | {speed_text(speed)} | {acc} |")

    for r in rows:
        net = short(r["network"])
        for label, e in r["forms"].items():
            line(net, f"{label} whole", f"{e['nodes']} / {e['nodes']}", e["speed"], e.get("held_out"))
        for p in r.get("mixed", {}).get("points", []):
            total = r["forms"][r["mixed_form"]]["nodes"]
            line(net, f"{r['mixed_form']} mixed (budget {p['budget']:g})",
                 f"{len(p['nodes'])} / {total}", p["speed"], p["held_out"])
    for r in rows:
        if "mixed" in r:
            pts = " · ".join(f"{t['nodes']}: {t['ratio']:.2f}" for t in r["mixed"]["curve"])
            print(f"\n{r['network']} {r['mixed_form']} curve (INT8 nodes: × limits on the "
                  f"calibration positions): {pts}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", type=Path, nargs="*", help="default: the four test networks")
    ap.add_argument("--forms", nargs="+", default=["mm-s8", "mm-u8", "conv+mm-u8"], choices=list(FORMS))
    ap.add_argument("--budget", type=float, nargs="+", default=[0.5, 1.0],
                    help="fractions of KataGo's FP16 limits on the calibration positions")
    ap.add_argument("--mixed-form", default="mm-u8", choices=list(FORMS),
                    help="the form searched node by node, when it is faster whole but over the "
                    "limits (mm-u8: s8 weights saturate AVX2's u8 x s8 product)")
    ap.add_argument("--no-mixed", action="store_true", help="whole-trunk forms only")
    ap.add_argument("--accuracy-always", action="store_true",
                    help="judge a whole form's accuracy even when it is not faster (what a CPU "
                    "with faster integer kernels would get)")
    ap.add_argument("--bench-seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, help="ONNX Runtime threads when timing "
                    "(default: its own, all cores)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kp-mixed-ref")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(f"machine: {machine()}; timing threads: {args.threads or 'ONNX Runtime default'}",
          flush=True)
    rows = []
    for net in args.net or networks():
        rows.append(one_network(net, args))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    table(rows)


if __name__ == "__main__":
    main()
