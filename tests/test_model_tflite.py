"""The TFLite writer: every block kind against the ONNX export's numbers (LiteRT vs ONNX
Runtime, with negative controls), whole networks and their I/O, and `katapool model
export-tflite` against the real engine, with its bad input."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from test_model_blocks import B, C, _attention, _mask, _x, conv, f32, norm
from test_model_inspect import _tiny_text_model

from conftest import G170, SHARED, TRANSFORMER, TRANSFORMER_KV, Katapool
from katapool.errors import ModelError
from katapool.models import export_tflite as tfl_mod
from katapool.models import load_model
from katapool.models.desc import (
    FFNBlock,
    GPoolBlock,
    MatBias,
    MatMul,
    MetaEncoder,
    NestedBottleneckBlock,
    OrdinaryBlock,
    RMSNorm,
    TransformerNorm,
)
from katapool.models.export_onnx import block_graph, export_onnx
from katapool.models.export_tflite import write_tflite
from katapool.models.litert import LiteRTSession
from katapool.models.oplist import Op, OpList, Tensor, from_onnx
from katapool.models.speed import synthetic_feeds
from katapool.models.tflite_format import read_metadata

GAMES = sorted((SHARED / "sgf" / "master-online").glob("*.sgf"))[:3]


def _blocks() -> dict[str, Callable[[], tuple[Any, Any]]]:
    """name -> (block, tip): one of every kind the writer must translate."""
    def ordinary(act: str) -> Callable[[], tuple[Any, Any]]:
        return lambda: (OrdinaryBlock("o", norm(C), act, conv(C, C), norm(C), act, conv(C, C)), None)

    def gpool() -> tuple[Any, Any]:
        return GPoolBlock("g", norm(C), "relu", conv(C, C), conv(C, 4), norm(4), "relu",
                          MatMul("m", f32(12, C)), norm(C), "relu", conv(C, C)), None

    def nested() -> tuple[Any, Any]:
        inner = OrdinaryBlock("i", norm(4), "mish", conv(4, 4), norm(4), "mish", conv(4, 4))
        return NestedBottleneckBlock("nb", norm(C), "mish", conv(C, 4, 1), [inner], norm(4),
                                     "mish", conv(4, C, 1)), None

    def ffn() -> tuple[Any, Any]:
        return FFNBlock("f", C, 12, True, TransformerNorm("n", 1e-6, f32(C) + 1),
                        MatMul("1", f32(C, 12)), MatMul("g", f32(C, 12)), MatMul("2", f32(12, C))), None

    def tip(n: Any, act: str) -> Callable[[], tuple[Any, Any]]:
        return lambda: (None, SimpleNamespace(trunk=SimpleNamespace(tip_norm=n, tip_act=act)))

    return {
        "ordinary-relu": ordinary("relu"), "ordinary-silu": ordinary("silu"),
        "ordinary-mish": ordinary("mish"), "gpool": gpool, "nested-bottleneck-mish": nested,
        "attention-fixed-rope": lambda: (_attention("fixed", 2, 2, 8, 8), None),
        "attention-learnable-rope-gqa": lambda: (_attention("learnable", 4, 2, 8, 4), None),
        "attention-no-rope": lambda: (_attention("none", 2, 1, 4, 4), None),
        "ffn-swiglu": ffn,
        "tip-rmsnorm-spatial": tip(RMSNorm("t", 1e-6, True, f32(C) + 1, f32(C)), "silu"),
        "tip-rmsnorm-channels": tip(RMSNorm("t", 1e-6, False, f32(C) + 1, f32(C)), "mish"),
        "tip-batchnorm": tip(norm(C), "relu"),
    }


BLOCKS = _blocks()


def _run_onnx(proto: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def _run_tflite(data: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return LiteRTSession(data).run(None, feeds)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _perturbed(ops: OpList) -> OpList:
    """The op list with its first weight tensor (a norm's scale in a trunk tip) 5% larger:
    a wrong file."""
    weights = [op.inputs[1] for op in ops.ops if op.kind in ("Conv", "MatMul")
               and ops.const(op.inputs[1]) is not None]
    scales = [i for op in ops.ops if op.kind == "Mul" for i in op.inputs
              if (v := ops.const(i)) is not None and v.size > 1]
    name = (weights or scales)[0]
    value = ops.const(name)
    assert value is not None
    tensors = dict(ops.tensors)
    tensors[name] = Tensor(name, value.shape, (value * 1.05).astype(value.dtype))
    return dataclasses.replace(ops, tensors=tensors)


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_every_block_kind_matches_the_onnx_export(kind: str) -> None:
    block, tip = BLOCKS[kind]()
    mask = _mask()
    x = _x(mask) * (3 if tip is not None else 1)
    proto = block_graph(block, C, B, tip=tip)
    feeds = {"X": x, "Mask": mask}
    (ref,) = _run_onnx(proto, feeds)
    ops = from_onnx(proto)
    (fp32,) = _run_tflite(write_tflite(ops, "fp32"), feeds)
    assert _rel(fp32, ref) < 1e-4, kind
    (fp16,) = _run_tflite(write_tflite(ops, "fp16"), feeds)
    assert _rel(fp16, ref) < 2e-2, kind  # FP16 weights: rounded, and not by much
    if tip is None:  # a tip has no convolution or matrix weights to round
        assert _rel(fp16, ref) > 0, kind
    # Negative control: a 5% error in one weight is seen.
    (wrong,) = _run_tflite(write_tflite(_perturbed(ops), "fp32"), feeds)
    assert _rel(wrong, ref) > 1e-3, kind


def test_a_wrong_layout_mapping_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control for the NHWC bookkeeping: reductions over the wrong axes disagree."""
    block, _ = BLOCKS["gpool"]()
    mask = _mask()
    feeds = {"X": _x(mask), "Mask": mask}
    proto = block_graph(block, C, B)
    (ref,) = _run_onnx(proto, feeds)
    monkeypatch.setattr(tfl_mod, "_AXIS_NHWC", {0: 0, 1: 1, 2: 2, 3: 3})
    with pytest.raises((ModelError, RuntimeError, ValueError, AssertionError)):
        (got,) = _run_tflite(write_tflite(from_onnx(proto)), feeds)
        assert _rel(got, ref) < 1e-4


@pytest.mark.parametrize("net", [G170, TRANSFORMER, TRANSFORMER_KV], ids=lambda p: p.name[:12])
def test_whole_networks_io_batch_and_metadata(net: Path) -> None:
    model = load_model(net)
    proto = export_onnx(model, postprocess=True)
    data = write_tflite(from_onnx(proto), "fp32")
    session = LiteRTSession(data)
    assert [i.name for i in session.get_inputs()] == ["InputSpatial", "InputGlobal"]
    assert [i.shape for i in session.get_inputs()] == [["batch", 22, 19, 19], ["batch", 19]]
    names = [o.name for o in session.get_outputs()]
    assert names[:5] == ["OutputPolicyPass", "OutputPolicy", "OutputValue", "OutputScoreValue",
                         "OutputOwnership"] and "Policy" in names and "Ownership" in names
    onnx_session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # dynamic batch: resized in place
        feeds = synthetic_feeds(onnx_session, batch, seed=batch)
        for got, ref in zip(session.run(None, feeds), onnx_session.run(None, feeds), strict=True):
            assert got.shape == ref.shape and _rel(got, ref) < 1e-4
    meta = json.loads(read_metadata(data)["katapool"])
    assert meta["name"] == model.name and meta["precision"] == "fp32"
    assert meta["modelVersion"] == str(model.version) and "model_config" in meta


def test_human_sl_metadata_encoder_input() -> None:
    """A network with KataGo's metadata encoder takes a third input, InputMeta [N, 192]."""
    model = load_model(G170)
    c = model.trunk.channels
    meta = MetaEncoder("meta", 192, MatMul("m1", f32(192, 16)), MatBias("b1", f32(16)), "relu",
                       MatMul("m2", f32(16, 16)), MatBias("b2", f32(16)), "relu",
                       MatMul("m3", f32(16, c)))
    human = dataclasses.replace(model, trunk=dataclasses.replace(model.trunk, meta=meta),
                                meta_encoder_version=1)
    proto = export_onnx(human)
    session = LiteRTSession(write_tflite(from_onnx(proto)))
    assert [i.name for i in session.get_inputs()][-1] == "InputMeta"
    onnx_session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = synthetic_feeds(onnx_session, 2)
    feeds["InputMeta"] = f32(2, 192, scale=1.0)
    got, ref = session.run(None, feeds), onnx_session.run(None, feeds)
    assert all(_rel(a, b) < 1e-4 for a, b in zip(got, ref, strict=True))
    feeds["InputMeta"] = np.zeros_like(feeds["InputMeta"])  # the input is really used
    assert _rel(session.run(None, feeds)[0], ref[0]) > 1e-4


# --- the CLI, with the real engine -------------------------------------------------------------

def _tiny(tmp_path: Path, edit: Callable[[str], str] = lambda t: t) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(edit(_tiny_text_model(np.random.default_rng(4))))
    return path


@pytest.mark.engine
def test_export_fp32_checked_on_self_play_positions(kp: Katapool, tmp_path: Path) -> None:
    out = tmp_path / "g170.tflite"
    proc = kp.run("model", "export-tflite", str(G170), "-o", str(out), "--positions", "4",
                  "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["written"] and result["check"]["positions"] == 4 and result["check"]["passed"]
    assert result["check"]["errors"]["winrate"]["max"] < 1e-4
    assert out.stat().st_size == result["size_bytes"]


@pytest.mark.engine
def test_export_fp16_and_int8_against_the_engine(kp: Katapool, tmp_path: Path) -> None:
    out = tmp_path / "tf.tflite"
    proc = kp.run("model", "export-tflite", str(TRANSFORMER_KV), "-o", str(out), "--fp16",
                  "--sgf", *map(str, GAMES), "--positions", "4", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["check"]["passed"] and result["check"]["limits"]["winrate"] == 0.02
    assert json.loads(read_metadata(out.read_bytes())["katapool"])["precision"] == "fp16"
    int8 = tmp_path / "g170-int8.tflite"
    proc = kp.run("model", "export-tflite", str(G170), "-o", str(int8), "--int8",
                  "--calibration", *map(str, GAMES), "--calibration-positions", "6",
                  "--positions", "4", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "INT8" in proc.stderr or "wrote" in proc.stderr
    assert int8.stat().st_size < G170.stat().st_size * 2
    meta = json.loads(read_metadata(int8.read_bytes())["katapool"])
    assert meta["precision"] == "int8" and int(meta["int8_layers"]) > 0


@pytest.mark.engine
def test_a_failed_check_writes_nothing(kp: Katapool, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the writer made to produce a wrong file (one weight 5% off); the check
    against the engine catches it and nothing is written."""
    import argparse

    from katapool.cli import model_mobile_cmd

    real = model_mobile_cmd._write
    monkeypatch.setattr(model_mobile_cmd, "_write",
                        lambda ops, proto, precision, feeds: real(_perturbed(ops), proto,
                                                                  precision, feeds))
    monkeypatch.setenv("KATAPOOL_DATA_DIR", str(kp.data_dir))
    out = tmp_path / "bad.tflite"
    args = argparse.Namespace(model=G170, output=out, board=19, postprocess=False, fp16=False,
                              int8=False, calibration=[], calibration_positions=64,
                              sgf=GAMES, positions=4, no_check=False, json=True, katago=None)
    assert model_mobile_cmd.cmd_export_tflite(args) == 1
    assert not out.exists() and not list(tmp_path.glob(".bad.tflite*"))


@pytest.mark.parametrize("case", ["unknown-version", "missing-extra", "unwritable", "fp16-range",
                                  "int8-no-calibration", "board"])
def test_bad_input_gets_one_clear_line(fresh_kp: Katapool, tmp_path: Path, case: str) -> None:
    out = tmp_path / "net.tflite"
    args: list[str] = [str(_tiny(tmp_path)), "-o", str(out), "--no-check"]
    env = None
    expect = ""
    if case == "unknown-version":
        args[0] = str(_tiny(tmp_path, lambda t: t.replace("tiny-net\n8", "tiny-net\n99", 1)))
        expect = "model version 99 is not supported"
    elif case == "missing-extra":
        hide = tmp_path / "hide"
        hide.mkdir()
        (hide / "sitecustomize.py").write_text(
            "import sys\nsys.modules['ai_edge_litert'] = None\nsys.modules['tflite'] = None\n")
        env = {"PYTHONPATH": str(hide)}
        expect = "pip install 'katapool[tflite]'"
    elif case == "unwritable":
        blocker = tmp_path / "file"
        blocker.write_text("")
        args[2] = str(blocker / "net.tflite")
        expect = "file is a file, where a folder is needed"
    elif case == "fp16-range":
        args[0] = str(_tiny(tmp_path, lambda t: re.sub(r"(b0/w1\n3\n3\n8\n8\n1\n1\n)[^\n]+",
                                                       r"\g<1>1000000.0", t, count=1)))
        args.append("--fp16")
        expect = "beyond FP16's range"
    elif case == "int8-no-calibration":
        args.append("--int8")
        expect = "--int8 needs --calibration"
    elif case == "board":
        args += ["--board", "25"]
        expect = "--board 25"
    proc = fresh_kp.run("model", "export-tflite", *args, env=env, timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert expect in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()


def test_no_check_still_runs_the_file_once(fresh_kp: Katapool, tmp_path: Path) -> None:
    out = tmp_path / "tiny.tflite"
    proc = fresh_kp.run("model", "export-tflite", str(_tiny(tmp_path)), "-o", str(out),
                        "--no-check", "--board", "9")
    assert proc.returncode == 0, proc.stderr
    assert "not compared with the engine" in proc.stderr
    session = LiteRTSession(out.read_bytes())
    assert session.get_inputs()[0].shape == ["batch", 22, 9, 9]


def test_large_sums_become_means() -> None:
    """The spatial RMSNorm tip's sum of x² (past FP16's range in KaTrain's b10c384) is written
    as a mean, so FP16 GPU delegates do not overflow; FP32 results are unchanged."""
    from katapool.models.oplist import averaged_sums

    _, tip = BLOCKS["tip-rmsnorm-spatial"]()
    ops = from_onnx(block_graph(None, C, B, tip=tip))
    before, after = ops.counts(), averaged_sums(ops).counts()
    assert after["ReduceSum"] == before["ReduceSum"] - 1
    assert after.get("ReduceMean", 0) == before.get("ReduceMean", 0) + 1
    mask = _mask()
    feeds = {"X": _x(mask) * 30, "Mask": mask}
    (ref,) = _run_onnx(block_graph(None, C, B, tip=tip), feeds)
    (got,) = _run_tflite(write_tflite(ops), feeds)
    assert _rel(got, ref) < 1e-5


def test_an_operator_without_translation_is_named() -> None:
    ops = OpList("odd", [Tensor("X", (-1, 4))], [Tensor("Y", (-1, 4))],
                 [Op("Erf", ("X",), "Y", {}, "block0")], {"X": Tensor("X", (-1, 4)),
                                                          "Y": Tensor("Y", (-1, 4))})
    with pytest.raises(ModelError, match="block0/Y: operator Erf has no TFLite translation"):
        write_tflite(ops)
