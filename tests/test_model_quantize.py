"""FP16 and INT8 versions of katapool's exports: which parts stay in higher precision, that
the converted graphs run, and `katapool model quantize` against the real engine (the
200-position figures are in docs/quantization.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from conftest import G170, SHARED, TRANSFORMER_KV, Katapool
from katapool.errors import ModelError
from katapool.models import load_model, quantize
from katapool.models.export_onnx import export_onnx
from katapool.models.speed import synthetic_feeds

GAMES = sorted((SHARED / "sgf" / "master-online").glob("*.sgf"))[:2] + \
    sorted((SHARED / "sgf" / "alphago-zero-selfplay").glob("*.sgf"))[:2]


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from katapool.models.validate import onnx_session

    session = onnx_session(proto.SerializeToString())
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def _feeds(proto: onnx.ModelProto, batch: int = 2) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = synthetic_feeds(session, batch)
    feeds["InputGlobal"][:, 5] = -0.5  # komi 7.5 for White, as the engine encodes it
    return feeds


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def g170() -> onnx.ModelProto:
    return export_onnx(load_model(G170))


@pytest.fixture(scope="module")
def transformer() -> onnx.ModelProto:
    return export_onnx(load_model(TRANSFORMER_KV))


def test_fp16_keeps_io_heads_and_reductions_in_fp32(transformer: onnx.ModelProto) -> None:
    fp16 = quantize.to_fp16(transformer)
    onnx.checker.check_model(fp16)
    for value in [*fp16.graph.input, *fp16.graph.output]:
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
    types = {init.name: init.data_type for init in fp16.graph.initializer}
    kept = set(quantize.fp16_kept_nodes(transformer))
    assert any(n.startswith("policy/") for n in kept) and any("/rms/" in n for n in kept)
    for node in fp16.graph.node:
        weights = [types[i] for i in node.input if i in types and node.op_type in ("Conv", "MatMul")]
        if not weights:
            continue
        parts = node.name.split("/")
        expected = TensorProto.FLOAT if parts[0] in quantize.HIGH_PRECISION_PARTS \
            else TensorProto.FLOAT16
        assert weights[0] == expected, node.name
    # Kept nodes read FP32 constants (a constant shared with an FP16 part would be halved and
    # reach them through a cast).
    made_by = {o: n for n in fp16.graph.node for o in n.output}
    for node in fp16.graph.node:
        if node.name in kept:
            for name in node.input:
                cast = made_by.get(name)
                source = cast.input[0] if cast is not None and cast.op_type == "Cast" else name
                assert types.get(source, TensorProto.FLOAT) in (TensorProto.FLOAT,
                                                                TensorProto.INT64), (node.name, name)
    # Between two kept nodes the value stays FP32: no FP32 -> FP16 -> FP32 round trip.
    producer = {o: n for n in fp16.graph.node for o in n.output}
    for node in fp16.graph.node:
        if node.name not in kept:
            continue
        for name in node.input:
            cast = producer.get(name)
            if cast is None or cast.op_type != "Cast":
                continue
            before = producer.get(cast.input[0])
            origin = producer.get(before.input[0]) if before is not None and \
                before.op_type == "Cast" else None
            assert origin is None or origin.name not in kept, (node.name, name)
    assert quantize.precision_of(fp16) == "fp16"


def test_fp16_runs_close_to_fp32(transformer: onnx.ModelProto) -> None:
    feeds = _feeds(transformer)
    ref, half = _run(transformer, feeds), _run(quantize.to_fp16(transformer), feeds)
    value_gap = np.abs(_softmax(ref["OutputValue"]) - _softmax(half["OutputValue"])).max()
    assert value_gap < 0.02
    assert 0 < np.abs(ref["OutputPolicy"] - half["OutputPolicy"]).max() < 0.5  # rounded, not off


def test_fp16_sum_of_squares_does_not_overflow(kp: Katapool) -> None:
    """KaTrain's b10c384 squares trunk values into a sum over the board far above FP16's
    65504 in its RMS-norm tip; a round trip through FP16 there gives inf and NaN outputs."""
    b10 = Path(kp.manifest()["engines"][0]["model"])  # type: ignore[index]
    proto = export_onnx(load_model(b10))
    out = _run(quantize.to_fp16(proto), _feeds(proto, 1))
    assert all(np.isfinite(v).all() for v in out.values())


def test_int8_quantizes_trunk_convolutions_only(g170: onnx.ModelProto, transformer: onnx.ModelProto
                                                ) -> None:
    for proto in (g170, transformer):
        feeds = [_feeds(proto, 1) for _ in range(2)]
        q = quantize.to_int8(proto, feeds, quantize.Int8Options(method="minmax"))
        onnx.checker.check_model(q)
        dequantized = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
        inits = {i.name: i for i in q.graph.initializer}
        quantized_nodes = {n.name for n in q.graph.node if n.op_type in ("Conv", "MatMul")
                           and any(i in dequantized for i in n.input)}
        assert quantized_nodes, "nothing was quantized"
        for name in quantized_nodes:
            assert name.split("/")[0].startswith("block") and "/scores/" not in name, name
        excluded = set(quantize.int8_excluded_nodes(proto))
        assert any(n.startswith("stem/") for n in excluded)
        assert any(n.startswith("value/") for n in excluded)
        assert not excluded & quantized_nodes
        # Symmetric: every zero point is 0.
        for node in q.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 \
                    and node.input[2] in inits:
                assert not onnx.numpy_helper.to_array(inits[node.input[2]]).any(), node.name
        # Weights per channel: one scale per output channel, on the output-channel axis.
        producer = {o: n for n in q.graph.node for o in n.output}
        for node in q.graph.node:
            if node.name not in quantized_nodes:
                continue
            dq = producer[node.input[1]]
            assert dq.op_type == "DequantizeLinear" and dq.input[0] in inits, node.name
            weight = inits[dq.input[0]]
            assert weight.data_type == TensorProto.INT8
            scales = onnx.numpy_helper.to_array(inits[dq.input[1]])
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            out_axis = 0 if node.op_type == "Conv" else len(weight.dims) - 1
            assert scales.shape == (weight.dims[out_axis],) and axis == out_axis, node.name
        assert quantize.precision_of(q).startswith("int8")
    scores = [n.name for n in transformer.graph.node if "/scores/" in n.name and n.op_type == "MatMul"]
    assert scores and set(scores) <= set(quantize.int8_excluded_nodes(transformer))


def test_minmax_calibration_over_a_multiple_of_four_batches(g170: onnx.ModelProto) -> None:
    """64 positions in batches of 8 made ONNX Runtime's min/max calibrator fail with "No data
    is collected" (its periodic merge emptied the last chunk)."""
    feeds = [_feeds(g170, 1) for _ in range(32)]  # 4 batches of 8
    q = quantize.to_int8(g170, feeds, quantize.Int8Options(method="minmax"))
    assert quantize.precision_of(q).startswith("int8 (minmax, 32 positions)")


def test_mse_clip_cuts_rare_outliers_and_keeps_common_ones() -> None:
    """Least squared error: one far value among a million is partly clipped (coarser steps for
    all the others cost more than its own error); a thousand of them are kept whole."""
    rng = np.random.default_rng(7)
    bulk = rng.uniform(0, 1, 1_000_000)
    for outliers, clipped in ((1, True), (1000, False)):
        values = np.concatenate([bulk, np.full(outliers, 100.0)])
        counts, edges = np.histogram(values, 2048)
        clip = quantize.mse_clip(counts, edges, 100.0, 255)
        assert 0 < clip <= 100.0
        assert (clip < 60.0) if clipped else (clip > 90.0), (outliers, clip)


def test_mse_ranges_stay_within_the_values_seen(g170: onnx.ModelProto) -> None:
    """`--calibration-method mse`: every activation's range is inside min/max's (a clip, never
    a widening), some strictly, and the file says how it was calibrated."""
    feeds = [_feeds(g170, 1) for _ in range(8)]

    def activation_scales(q: onnx.ModelProto) -> dict[str, float]:
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
        return {n.input[0]: float(inits[n.input[1]]) for n in q.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in inits
                and inits[n.input[1]].size == 1}

    mse = quantize.to_int8(g170, feeds, quantize.Int8Options(method="mse"))
    minmax = quantize.to_int8(g170, feeds, quantize.Int8Options(method="minmax"))
    assert quantize.precision_of(mse).startswith("int8 (mse, 8 positions)")
    ours, widest = activation_scales(mse), activation_scales(minmax)
    assert ours.keys() == widest.keys() and len(ours) >= 10
    assert all(ours[t] <= widest[t] * 1.0001 for t in ours)
    assert sum(ours[t] < widest[t] * 0.9 for t in ours) >= 3
    out = _run(mse, feeds[0])
    assert all(np.isfinite(v).all() for v in out.values())


def test_quantize_refuses_other_onnx_files(g170: onnx.ModelProto) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    foreign = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                  [x], [helper.make_tensor_value_info(
                                                      "y", TensorProto.FLOAT, [1])]))
    with pytest.raises(ModelError, match="not made by `katapool model export-onnx`"):
        quantize.to_fp16(foreign)
    with pytest.raises(ModelError, match="already quantized"):
        quantize.to_fp16(quantize.to_fp16(g170))
    with pytest.raises(ModelError, match="calibration"):
        quantize.to_int8(g170, [])
    with pytest.raises(ModelError, match="activations"):
        quantize.to_int8(g170, [_feeds(g170, 1)], quantize.Int8Options(activations="int4"))


@pytest.mark.engine
def test_quantize_cli_int8_against_the_engine(kp: Katapool, tmp_path: Path) -> None:
    out = tmp_path / "g170-int8.onnx"
    proc = kp.run("model", "quantize", str(G170), "--int8", "--calibration", *map(str, GAMES),
                  "--calibration-positions", "4", "--positions", "3", "--bench-seconds", "0.3",
                  "--bench-batch", "2", "--json", "-o", str(out), check=True)
    report = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    fp32, int8 = report["variants"]
    assert fp32["precision"] == "fp32" and int8["precision"].startswith("int8 (percentile, 4 ")
    assert fp32["validation"]["positions"] == int8["validation"]["positions"] == 3
    assert fp32["validation"]["passed"]  # the FP32 export is the engine to 1e-5
    assert int8["validation"]["errors"]["policy_kl"]["p99"] > fp32["validation"]["errors"][
        "policy_kl"]["p99"]
    assert int8["size_bytes"] < fp32["size_bytes"] / 2
    assert fp32["evals_per_second"] > 0 and int8["evals_per_second"] > 0
    assert out.stat().st_size == int8["size_bytes"]
    assert quantize.precision_of(onnx.load(str(out))).startswith("int8")


@pytest.mark.engine
def test_quantize_cli_fp16_passes_the_fp16_limits(kp: Katapool, tmp_path: Path) -> None:
    fp32 = tmp_path / "kv.onnx"
    kp.run("model", "export-onnx", str(TRANSFORMER_KV), "-o", str(fp32), check=True)
    out = tmp_path / "kv-fp16.onnx"
    proc = kp.run("model", "quantize", str(fp32), "--fp16", "--network", str(TRANSFORMER_KV),
                  "--sgf", *map(str, GAMES), "--positions", "6", "--bench-seconds", "0",
                  "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "fp16" in proc.stdout and "within" in proc.stdout and "over" not in proc.stdout
    assert out.exists()


@pytest.mark.engine
def test_quantize_cli_bad_input(kp: Katapool, tmp_path: Path, g170: onnx.ModelProto) -> None:
    fp32 = tmp_path / "g170.onnx"
    onnx.save(g170, str(fp32))
    cases = [
        (["--int8", "--positions", "0"], "--int8 needs --calibration"),
        (["--fp16", "--mixed", "--positions", "0"], "--mixed chooses INT8 nodes"),
        (["--int8", "--mixed", "--error-budget", "0", "--calibration", str(GAMES[0])],
         "--error-budget 0.0: must be above 0"),
        (["--fp16"], "validation needs games"),
        (["--fp16", "--sgf", str(GAMES[0])], "--network NET"),
        (["--fp16", "--sgf", str(GAMES[0]), "--network", str(TRANSFORMER_KV)],
         "is an export of g170"),
    ]
    for extra, message in cases:
        proc = kp.run("model", "quantize", str(fp32), *extra, "-o", str(tmp_path / "x.onnx"))
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert proc.stdout == "" and not (tmp_path / "x.onnx").exists()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    proc = kp.run("model", "quantize", str(junk), "--fp16", "--positions", "0", "-o",
                  str(tmp_path / "x.onnx"))
    assert proc.returncode == 1 and "not a readable ONNX file" in proc.stderr  # ModelError


@pytest.mark.parametrize("validation_games, calibration_games", [
    (GAMES, GAMES),            # one set: split
    (GAMES[:3], GAMES[1:]),    # overlapping sets
])
def test_calibration_never_uses_a_validation_position(tmp_path: Path, validation_games: list[Path],
                                                      calibration_games: list[Path]) -> None:
    from katapool.models.precision_check import pick_positions

    checked, calibration = pick_positions(validation_games, calibration_games, 40, 60, tmp_path)
    assert len(checked) == 40 and len(calibration) == 60
    assert not {(p.sgf, p.moves) for p in checked} & {(p.sgf, p.moves) for p in calibration}
    names = {p.sgf.name.split("-", 1)[1] for p in calibration}
    assert names <= {g.name for g in calibration_games}


def test_repeated_converter_casts_are_dropped() -> None:
    """ONNX Runtime 1.30's FP16 converter casts x twice for a kept x·x; both casts make the
    same tensor, and ONNX Runtime refuses a graph with two producers of one name."""
    cast = helper.make_node("Cast", ["x"], ["x32"], name="x_cast", to=TensorProto.FLOAT)
    square = helper.make_node("Mul", ["x32", "x32"], ["y"], name="square")
    graph = helper.make_graph([cast, cast, square], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    quantize.drop_repeated_nodes(graph)
    assert [n.name for n in graph.node] == ["x_cast", "square"]
    onnx.checker.check_model(helper.make_model(graph))


@pytest.mark.engine
def test_quantize_cli_mixed_int8_keeps_only_the_least_sensitive_nodes(kp: Katapool,
                                                                       tmp_path: Path) -> None:
    """--mixed: every candidate's sensitivity is measured against the engine, the INT8 nodes
    are the least sensitive ones, as many as stay within the budget, and the file keeps the
    symmetric INT8 Q/DQ form TensorRT takes."""
    out = tmp_path / "g170-mixed.onnx"
    proc = kp.run("model", "quantize", str(G170), "--int8", "--mixed", "--error-budget", "2",
                  "--calibration", *map(str, GAMES), "--calibration-positions", "8",
                  "--positions", "4", "--bench-seconds", "0", "--json", "-o", str(out))
    report = json.loads(proc.stdout)
    mixed = report["mixed"]
    candidates = quantize.int8_candidates(export_onnx(load_model(G170)))
    assert mixed["candidates"] == len(candidates) == 16
    sens = mixed["sensitivities"]  # one per unit: the nodes reading one activation
    assert [n for s in sens for n in s["nodes"]] == candidates
    assert all(s["ratio"] > 0 for s in sens)
    ranked = [n for s in sorted(sens, key=lambda s: s["ratio"]) for n in s["nodes"]]
    chosen = mixed["int8_nodes"]
    assert chosen == ranked[:len(chosen)]  # a prefix of the ranking, least sensitive first
    curve = {t["int8_nodes"]: t for t in mixed["curve"]}
    assert {0, 16} <= set(curve)  # (speed left out: --bench-seconds 0)
    assert curve[len(chosen)]["ratio"] <= 2.0  # within the budget...
    assert all(t["ratio"] > 2.0 for k, t in curve.items() if k > len(chosen))  # ...and the most
    assert curve[16]["ratio"] > curve[0]["ratio"]  # all INT8 costs accuracy; FP32 is the engine
    q = onnx.load(str(out))
    dequantized = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    in_int8 = [n.name for n in q.graph.node if n.op_type in ("Conv", "MatMul")
               and any(i in dequantized for i in n.input)]
    assert sorted(in_int8) == sorted(chosen)
    inits = {i.name: i for i in q.graph.initializer}
    for node in q.graph.node:  # TensorRT's explicit quantization: signed, zero points 0
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero = onnx.numpy_helper.to_array(inits[node.input[2]])
            assert zero.dtype == np.int8 and not zero.any(), node.name
    recorded = {p.key: p.value for p in q.metadata_props}
    assert json.loads(recorded["katapool_int8_nodes"])["nodes"] == chosen
    final = report["variants"][1]
    assert final["validation"]["positions"] == 4
    # The mixed file promises KataGo's FP16 limits: over them on the held-out positions, the
    # command says so by its exit status (the budget here is loose on purpose, 2x the limits).
    assert proc.returncode == (0 if final["validation"]["passed"] else 1), proc.stderr
