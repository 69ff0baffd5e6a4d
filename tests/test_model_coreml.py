"""The Core ML writer: every block kind, whole networks in FP32 and FP16, and the export's
checks. Core ML cannot run on Linux, so each package is read back from disk and replayed with
ONNX Runtime (``coreml_replay``) against the ONNX export it was written from; negative controls
show that the comparison catches a wrong weight, a wrong layout and FP16 overflow."""

from __future__ import annotations

import dataclasses
import json
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from test_model_blocks import conv, f32, norm
from test_model_inspect import _tiny_text_model

from conftest import G170, ROOT, SHARED, TRANSFORMER_KV, Katapool
from katapool.errors import ModelError
from katapool.models import export_coreml as writer
from katapool.models import load_model
from katapool.models.coreml_check import NOT_VERIFIED, check_coreml
from katapool.models.coreml_replay import (
    REPLAY_LIMITS,
    compare_with_onnx,
    relative_errors,
    replay,
    run_onnx,
)
from katapool.models.desc import (
    AttentionBlock,
    FFNBlock,
    GPoolBlock,
    MatBias,
    MatMul,
    MetaEncoder,
    NestedBottleneckBlock,
    Norm,
    OrdinaryBlock,
    RMSNorm,
    TransformerNorm,
)
from katapool.models.export_coreml import build_coreml, export_coreml
from katapool.models.export_onnx import block_graph, export_onnx
from katapool.models.oplist import Op, OpList, Tensor, from_onnx

B, C, N = 7, 8, 2  # a 7x7 buffer holding a 5x5 board (and a full 7x7 one)
rng = np.random.default_rng(5)


def tnorm() -> TransformerNorm:
    return TransformerNorm("n", 1e-6, f32(C) + 1)


def attention(rope: str, heads: int, kv: int, dq: int, dv: int) -> AttentionBlock:
    b = AttentionBlock("a", heads, kv, dq, dv, rope, tnorm(), MatMul("q", f32(C, heads * dq)),
                       MatMul("k", f32(C, kv * dq)), MatMul("v", f32(C, kv * dv)),
                       MatMul("o", f32(heads * dv, C)))
    if rope == "learnable":
        b.rope_freqs = f32(kv, dq // 2, 2, scale=0.8)
    elif rope == "fixed":
        b.rope_theta = 100.0
    return b


def tip(n: Norm | RMSNorm, act: str) -> SimpleNamespace:
    return SimpleNamespace(trunk=SimpleNamespace(tip_norm=n, tip_act=act))


BLOCKS: dict[str, tuple[Any, Any]] = {  # name -> (block, trunk tip)
    "ordinary-relu": (OrdinaryBlock("o", norm(C), "relu", conv(C, C), norm(C), "relu", conv(C, C)), None),
    "ordinary-mish": (OrdinaryBlock("o", norm(C), "mish", conv(C, C), norm(C), "silu", conv(C, C)), None),
    "gpool": (GPoolBlock("g", norm(C), "relu", conv(C, C), conv(C, 4), norm(4), "relu",
                         MatMul("m", f32(12, C)), norm(C), "relu", conv(C, C)), None),
    "nested-bottleneck": (NestedBottleneckBlock(
        "nb", norm(C), "silu", conv(C, 4, 1),
        [OrdinaryBlock("i", norm(4), "silu", conv(4, 4), norm(4), "silu", conv(4, 4))],
        norm(4), "silu", conv(4, C, 1)), None),
    "attention-fixed-rope": (attention("fixed", 2, 2, 8, 8), None),
    "attention-learnable-rope-gqa": (attention("learnable", 4, 2, 8, 4), None),
    "attention-no-rope-gqa": (attention("none", 2, 1, 4, 4), None),
    "ffn-swiglu": (FFNBlock("f", C, 12, True, tnorm(), MatMul("1", f32(C, 12)),
                            MatMul("g", f32(C, 12)), MatMul("2", f32(12, C))), None),
    "rmsnorm-tip-spatial": (None, tip(RMSNorm("t", 1e-6, True, f32(C) + 1, f32(C)), "silu")),
    "rmsnorm-tip": (None, tip(RMSNorm("t", 1e-6, False, f32(C) + 1, f32(C)), "mish")),
    "batchnorm-tip": (None, tip(norm(C), "relu")),
}


def feeds(scale: float = 1.0) -> dict[str, np.ndarray]:
    mask = np.zeros((N, 1, B, B), dtype=np.float32)
    mask[0, :, :5, :5] = 1.0  # board in the top-left corner, as KataGo lays it out
    mask[1] = 1.0
    x = (rng.standard_normal((N, C, B, B)) * scale * mask).astype(np.float32)
    return {"X": x, "Mask": mask}


def package(ops: OpList, where: Path, precision: str = "fp32", batch: int | None = None) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{precision}-{batch}.mlpackage"
    with writer.quiet():
        build_coreml(ops, precision, batch).save(str(path))
    return path


def worst(path: Path, proto: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> float:
    return max(relative_errors(replay(path, inputs), run_onnx(proto, inputs)).values())


# --- blocks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(BLOCKS))
def test_each_block_kind_replays_exactly(kind: str, tmp_path: Path) -> None:
    block, trunk_tip = BLOCKS[kind]
    proto = block_graph(block, C, B, tip=trunk_tip)
    path = package(from_onnx(proto), tmp_path)
    assert worst(path, proto, feeds()) < 1e-4


def test_perturbed_weight_and_wrong_layout_are_caught(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    block, _ = BLOCKS["gpool"]
    proto = block_graph(block, C, B)
    ops = from_onnx(proto)
    inputs = feeds()
    assert worst(package(ops, tmp_path / "ok"), proto, inputs) < 1e-4
    # One weight of one convolution off by 0.05 (they are ~0.3).
    name = next(op.inputs[1] for op in ops.ops if op.kind == "Conv")
    value = ops.tensors[name].value
    assert value is not None
    changed = value.copy()
    changed.flat[7] += 0.05
    bad = dataclasses.replace(ops, tensors={**ops.tensors, name: Tensor(name, value.shape, changed)})
    assert worst(package(bad, tmp_path / "weight"), proto, inputs) > 1e-4
    # Kernels read with x and y swapped ([out, in, kX, kY]): shapes fit, numbers do not.
    monkeypatch.setattr(writer, "conv_weight", lambda w: np.ascontiguousarray(w.transpose(0, 1, 3, 2)))
    assert worst(package(ops, tmp_path / "layout"), proto, inputs) > 1e-4


def test_fp16_rounds_and_a_sum_that_would_overflow_is_averaged(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The spatial RMSNorm tip sums x² over channels and board; with activations near 30 that
    passes FP16's 65504, as b10c384's tip does on a 19x19 board. The writer averages instead;
    written as a plain sum the FP16 replay overflows (the replay rounds like FP16 hardware):
    x / sqrt(inf) is 0 and only the tip's bias is left."""
    block, trunk_tip = BLOCKS["rmsnorm-tip-spatial"]
    proto = block_graph(block, C, B, tip=trunk_tip)
    ops = from_onnx(proto)
    inputs = feeds(scale=30.0)
    total = float((inputs["X"][1] ** 2).sum())
    assert total > 65504
    fp32 = worst(package(ops, tmp_path / "a", "fp32"), proto, inputs)
    fp16 = worst(package(ops, tmp_path / "a", "fp16"), proto, inputs)
    assert fp32 < 1e-5 and 1e-5 < fp16 < 1e-2  # FP16 rounding happened, nothing worse
    monkeypatch.setattr(writer, "averaged_sums", lambda ops: ops)
    assert worst(package(ops, tmp_path / "b", "fp16"), proto, inputs) > 0.5


# --- whole networks -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def g170() -> onnx.ModelProto:
    proto: onnx.ModelProto = export_onnx(load_model(G170), postprocess=True)
    return proto


@pytest.mark.parametrize("net, precision", [("g170", "fp32"), ("g170", "fp16"),
                                            ("transformer", "fp32"), ("transformer", "fp16")])
def test_networks_build_check_and_replay(net: str, precision: str, g170: onnx.ModelProto,
                                         tmp_path: Path) -> None:
    # The transformer (grouped-query attention, learnable RoPE) on a 9x9 board: the same
    # ops, a quicker replay.
    proto = g170 if net == "g170" else export_onnx(load_model(TRANSFORMER_KV), board=9)
    ops = from_onnx(proto)
    path = package(ops, tmp_path, precision)
    check = check_coreml(path, ops, precision)
    assert check.passed, check.checks
    assert not check.off_precision_ops
    if precision == "fp16":
        assert check.op_counts["cast"] == len(ops.inputs) + len(ops.outputs)
    errors = compare_with_onnx(path, proto)
    assert set(errors) == {t.name for t in ops.outputs}
    assert max(errors.values()) < (1e-4 if precision == "fp32" else 1e-2), errors
    if precision == "fp16":
        assert max(errors.values()) > 1e-5  # really replayed in FP16


def test_human_sl_meta_input(tmp_path: Path) -> None:
    model = load_model(G170)
    c = model.trunk.channels
    meta = MetaEncoder("meta", 192, MatMul("m1", f32(192, 32, scale=0.1)), MatBias("b1", f32(32)),
                       "silu", MatMul("m2", f32(32, 16)), MatBias("b2", f32(16)), "relu",
                       MatMul("m3", f32(16, c)))
    human = dataclasses.replace(model, meta_encoder_version=1,
                                trunk=dataclasses.replace(model.trunk, meta=meta))
    proto = export_onnx(human, board=9)
    ops = from_onnx(proto)
    assert [t.name for t in ops.inputs] == ["InputSpatial", "InputGlobal", "InputMeta"]
    path = package(ops, tmp_path)
    check = check_coreml(path, ops, "fp32")
    assert check.passed, check.checks
    errors = compare_with_onnx(path, proto)
    assert max(errors.values()) < 1e-4
    # The meta input matters: without it the policy differs.
    program_out = replay(path, _meta_feeds(ops, 1.0))
    assert not np.allclose(program_out["OutputPolicy"], replay(path, _meta_feeds(ops, 0.0))["OutputPolicy"])


def _meta_feeds(ops: OpList, meta: float) -> dict[str, np.ndarray]:
    spatial = np.zeros((1, 22, 9, 9), dtype=np.float32)
    spatial[:, 0] = 1.0
    return {"InputSpatial": spatial, "InputGlobal": np.zeros((1, 19), dtype=np.float32),
            "InputMeta": np.full((1, 192), meta, dtype=np.float32)}


def test_fixed_batch(g170: onnx.ModelProto, tmp_path: Path) -> None:
    ops = from_onnx(g170)
    path = package(ops, tmp_path, batch=2)
    check = check_coreml(path, ops, "fp32", batch=2)
    assert check.passed, check.checks
    assert not check_coreml(path, ops, "fp32").passed  # it is not the flexible batch
    assert max(compare_with_onnx(path, g170, batch=2).values()) < 1e-4


# --- the export -----------------------------------------------------------------------------

def test_export_checks_then_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "g170.mlpackage"
    result = export_coreml(G170, out, "fp16", board=9, batch=None, postprocess=False)
    assert result.passed and result.path == out and out.is_dir(), result.as_dict()
    assert result.replay_errors and max(result.replay_errors.values()) < REPLAY_LIMITS["fp16"]
    assert result.size_bytes > 1e6 and list(result.not_verified) == list(NOT_VERIFIED)
    names = [c for c, _, _ in result.checks]
    assert names == ["reload", "inputs", "outputs", "metadata", "precision", "ops", "package", "replay"]
    import coremltools as ct

    with writer.quiet():
        spec = ct.models.MLModel(str(out), skip_model_load=True).get_spec()
    meta = dict(spec.description.metadata.userDefined)
    assert meta["name"] == "g170-b6c96-s175395328-d26788732" and meta["modelVersion"] == "8"
    assert meta["pos_len_x"] == "9" and meta["katapool.precision"] == "fp16"
    assert spec.description.metadata.author == "katapool"
    # Readable by others as any new file is (coremltools saves owner-only ones).
    from katapool.models.export_check import umask

    for path in [out, *out.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask()
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    # A failed check leaves the earlier package alone and writes nothing beside it.
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setitem(REPLAY_LIMITS, "fp16", 0.0)
    failed = export_coreml(G170, out, "fp16", board=9, batch=None, postprocess=False)
    assert not failed.passed and failed.path is None
    assert not [ok for c, ok, _ in failed.checks if c == "replay"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_new_package_replaces_the_old_whole(tmp_path: Path) -> None:
    old, new = tmp_path / "net.mlpackage", tmp_path / ".net.mlpackage.partial" / "net.mlpackage"
    (old / "Data").mkdir(parents=True)
    (old / "Data" / "stale").write_text("old")
    new.mkdir(parents=True)
    (new / "Manifest.json").write_text("{}")
    writer._put_in_place(new, old)
    assert sorted(p.name for p in old.iterdir()) == ["Manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".net.mlpackage.partial", "net.mlpackage"]


def test_bad_requests_say_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="board size 25"):
        export_coreml(G170, tmp_path / "x.mlpackage", "fp32", board=25, batch=None, postprocess=False)
    with pytest.raises(ModelError, match="named \\*.mlpackage"):
        export_coreml(G170, tmp_path / "x.mlmodel", "fp32", board=19, batch=None, postprocess=False)
    with pytest.raises(ModelError, match="precision 'int8'"):
        export_coreml(G170, tmp_path / "x.mlpackage", "int8", board=19, batch=None, postprocess=False)
    ops = OpList("odd", [Tensor("X", (-1, 4))], [Tensor("Y", (-1, 4))],
                 [Op("Erf", ("X",), "Y", {}, "block0")], {})
    with pytest.raises(ModelError, match="block0/Y: operator Erf has no Core ML translation"):
        build_coreml(ops)
    with pytest.raises(ModelError, match="batch 0"):
        build_coreml(ops, batch=0)
    with pytest.raises(ModelError, match="deployment target"):
        build_coreml(ops, deployment="iOS99")
    monkeypatch.setitem(sys.modules, "coremltools", None)  # as if it were not installed
    with pytest.raises(ModelError, match=r"pip install 'katapool\[coreml\]'"):
        build_coreml(from_onnx(block_graph(BLOCKS["ordinary-relu"][0], C, B)))
    assert list(tmp_path.iterdir()) == []
    notes = tmp_path / "notes.mlpackage"  # a file: it would be set aside and never removed
    notes.write_text("mine")
    with pytest.raises(ModelError, match="is a file, not a Core ML package"):
        export_coreml(G170, notes, "fp32", board=19, batch=None, postprocess=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.mlpackage"]


def test_coremltools_noise_never_reaches_the_output() -> None:
    """On Linux, importing coremltools logs that its native runtime is missing."""
    code = ("from katapool.models.export_coreml import import_coremltools\n"
            "import_coremltools()\nprint('done')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n" and "Failed to load" not in proc.stderr


# --- the CLI -----------------------------------------------------------------------------------

@pytest.mark.engine
def test_cli_checks_against_the_engine(kp: Katapool, tmp_path: Path) -> None:
    out = tmp_path / "g170.mlpackage"
    games = sorted((SHARED / "sgf" / "master-online").glob("*.sgf"))[:3]
    proc = kp.run("model", "export-coreml", str(G170), "-o", str(out), "--sgf", *map(str, games),
                  "--positions", "4", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["written"] and out.is_dir() and result["precision"] == "fp32"
    engine = result["engine_check"]
    assert engine["positions"] == 4 and engine["passed"], engine
    assert engine["errors"]["winrate"]["max"] < 1e-4  # FP32: the engine's printed precision
    assert any(c["check"] == "engine" and c["ok"] for c in result["checks"])
    assert result["not_verified"]


@pytest.mark.parametrize("case", ["unknown-version", "missing-extra", "unwritable", "fp16-range",
                                  "suffix", "batch"])
def test_cli_bad_input_gets_one_clear_line(fresh_kp: Katapool, tmp_path: Path, case: str) -> None:
    net = tmp_path / "tiny.txt"
    text = _tiny_text_model(np.random.default_rng(4))
    out = tmp_path / "net.mlpackage"
    extra: list[str] = []
    env = None
    if case == "unknown-version":
        text = text.replace("tiny-net\n8", "tiny-net\n99", 1)
        expect = "model version 99 is not supported"
    elif case == "missing-extra":
        hide = tmp_path / "hide"
        hide.mkdir()
        (hide / "sitecustomize.py").write_text("import sys\nsys.modules['coremltools'] = None\n")
        env = {"PYTHONPATH": str(hide)}
        expect = "pip install 'katapool[coreml]'"
    elif case == "unwritable":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "net.mlpackage"
        expect = "file is a file, where a folder is needed"
    elif case == "fp16-range":
        text = re.sub(r"(b0/w1\n3\n3\n8\n8\n1\n1\n)[^\n]+", r"\g<1>1000000.0", text, count=1)
        extra = ["--fp16"]
        expect = "beyond FP16's range"
    elif case == "suffix":
        out = tmp_path / "net.mlmodel"
        expect = "named *.mlpackage"
    else:
        extra = ["--batch", "0"]
        expect = "--batch 0"
    net.write_text(text)
    proc = fresh_kp.run("model", "export-coreml", str(net), "-o", str(out), "--no-check", *extra,
                        env=env, timeout=120)
    assert proc.returncode != 0, proc.stderr
    assert expect in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()
