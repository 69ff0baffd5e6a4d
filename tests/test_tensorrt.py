"""TensorRT engines (`katapool model build-trt`).

Everywhere: the plain refusal where TensorRT or a GPU is missing, the precision rules, and the
builder calls, against a stand-in for the `tensorrt` module (named as such: `fake_tensorrt`).
Where an NVIDIA GPU and the tensorrt package exist: real FP32, FP16 and INT8 engines of the g170
network, run through `load_and_run` and compared with ONNX Runtime on the CPU. Elsewhere those
are skipped with the reason `tensorrt_status()` gives. `benchmarks/gpu_check.sh` runs them on a
GPU machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import G170, SHARED, Katapool
from katapool.cli.model_trt_cmd import cmd_build_trt, register_trt
from katapool.errors import ConfigError, ModelError
from katapool.models import tensorrt_build
from katapool.models.tensorrt_build import (
    NOT_INSTALLED,
    build_engine,
    load_and_run,
    onnx_precision,
    plan_build,
    tensorrt_status,
)

TRT_REASON = tensorrt_status()
needs_gpu = pytest.mark.skipif(TRT_REASON is not None, reason=TRT_REASON or "")
CALIBRATION_GAME = sorted((SHARED / "sgf" / "master-online").glob("*.sgf"))[:1]


# --- tiny ONNX files of each precision ----------------------------------------------------------

def tiny_onnx(path: Path, kind: str = "fp32", batch: str | int = "N") -> Path:
    """Our exports' inputs ([N, 22, 19, 19] and [N, 19]) around a trivial graph: FP32, with FP16
    tensors, or with Q/DQ nodes."""
    spatial = helper.make_tensor_value_info("InputSpatial", TensorProto.FLOAT, [batch, 22, 19, 19])
    glob = helper.make_tensor_value_info("InputGlobal", TensorProto.FLOAT, [batch, 19])
    out = helper.make_tensor_value_info("OutputValue", TensorProto.FLOAT, [batch, 19])
    inits = []
    if kind == "fp16":
        nodes = [helper.make_node("Cast", ["InputGlobal"], ["h"], to=TensorProto.FLOAT16),
                 helper.make_node("Cast", ["h"], ["OutputValue"], to=TensorProto.FLOAT)]
    elif kind == "int8":
        inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05]),
                 helper.make_tensor("zero", TensorProto.INT8, [], [0])]
        nodes = [helper.make_node("QuantizeLinear", ["InputGlobal", "scale", "zero"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["OutputValue"])]
    else:
        nodes = [helper.make_node("Identity", ["InputGlobal"], ["OutputValue"])]
    graph = helper.make_graph(nodes, "tiny", [spatial, glob], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_precision_is_read_from_the_file(tmp_path: Path) -> None:
    assert onnx_precision(tiny_onnx(tmp_path / "a.onnx")) == "fp32"
    assert onnx_precision(tiny_onnx(tmp_path / "b.onnx", "fp16")) == "fp16"
    assert onnx_precision(tiny_onnx(tmp_path / "c.onnx", "int8")) == "int8"
    with pytest.raises(ModelError, match="not found"):
        onnx_precision(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00 not protobuf")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        onnx_precision(tmp_path / "junk.onnx")


def test_precision_rules() -> None:
    def has_flag() -> str | None:
        return None

    def trt11() -> str | None:
        return "11.4.0.106"

    def unasked() -> str | None:
        raise AssertionError("TensorRT's flags do not matter here")

    # The file decides when no flag is given; its own types are kept (strongly typed).
    for kind in ("fp32", "fp16", "int8"):
        plan = plan_build("m.onnx", kind, None, unasked)
        assert (plan.precision, plan.strongly_typed, plan.fp16_flag) == (kind, True, False)
    assert plan_build("m.onnx", "int8", "int8", unasked).strongly_typed
    assert plan_build("m.onnx", "fp16", "fp16", unasked).strongly_typed
    weak = plan_build("m.onnx", "fp32", "fp16", has_flag)
    assert (weak.precision, weak.strongly_typed, weak.fp16_flag) == ("fp16", False, True)
    with pytest.raises(ModelError, match=r"TensorRT 11\.4\.0\.106 has no FP16 builder flag.*"
                                         r"katapool model quantize --fp16"):
        plan_build("m.onnx", "fp32", "fp16", trt11)
    with pytest.raises(ModelError, match=r"no QuantizeLinear/DequantizeLinear.*quantize --int8"):
        plan_build("m.onnx", "fp32", "int8", unasked)
    with pytest.raises(ModelError, match="no QuantizeLinear"):
        plan_build("m.onnx", "fp16", "int8", unasked)
    with pytest.raises(ModelError, match="INT8 .Q/DQ. model: build it with --int8"):
        plan_build("m.onnx", "int8", "fp16", unasked)
    with pytest.raises(ModelError, match="already carries FP16"):
        plan_build("m.onnx", "fp16", "fp32", unasked)


# --- availability -------------------------------------------------------------------------------

def test_status_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    assert tensorrt_status() == NOT_INSTALLED


def test_status_with_a_broken_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text(
        "raise ImportError('libnvinfer.so.11: cannot open shared object file')\n")
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert tensorrt_status() == ("the tensorrt Python package does not load: libnvinfer.so.11: "
                                 "cannot open shared object file")


def test_status_with_the_package_but_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    trt = fake_tensorrt(builder_error="must not be reached")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert tensorrt_status() == "no NVIDIA GPU visible (CUDA_VISIBLE_DEVICES='' hides them)"

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    import katapool.devices.nvidia as nvidia

    monkeypatch.setattr(nvidia, "list_nvidia_gpus",
                        lambda: ([], "no NVIDIA driver (nvidia-smi not found)"))
    monkeypatch.setattr(tensorrt_build, "_device_nodes", lambda: [])
    assert tensorrt_status() == ("no NVIDIA GPU visible (no /dev/nvidia* device; no NVIDIA "
                                 "driver (nvidia-smi not found))")

    # A GPU seems there, but TensorRT cannot reach it (driver too old for its CUDA, ...).
    monkeypatch.setattr(tensorrt_build, "_device_nodes", lambda: ["/dev/nvidia0"])
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(
        builder_error="CUDA initialization failure with error: 35"))
    assert tensorrt_status() == ("TensorRT 10.9.0.34 cannot use the GPU: CUDA initialization "
                                 "failure with error: 35")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version="8.6.1"))
    assert tensorrt_status() == "TensorRT 8.6.1 is too old (katapool needs 10 or newer)"
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    assert tensorrt_status() is None


def test_build_trt_refuses_plainly_without_tensorrt(fresh_kp: Katapool, tmp_path: Path) -> None:
    # A tensorrt that is not there, even on a machine that has one.
    hidden = tmp_path / "hide"
    (hidden / "tensorrt").mkdir(parents=True)
    (hidden / "tensorrt" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorrt'\", name='tensorrt')\n")
    plan = tmp_path / "y.plan"
    runs = [fresh_kp.run("model", "build-trt", str(tmp_path / "x.onnx"), "--fp16", "-o", str(plan),
                         env={"PYTHONPATH": _prepend(hidden)})]
    expected = [NOT_INSTALLED]
    if TRT_REASON is not None:  # and as it really is here
        runs.append(fresh_kp.run("model", "build-trt", str(tmp_path / "x.onnx"), "--fp16", "-o",
                                 str(plan)))
        expected.append(TRT_REASON)
    for proc, reason in zip(runs, expected, strict=True):
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        assert f"error: cannot build a TensorRT engine here: {reason}" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not plan.exists() and not plan.with_name("y.plan.partial").exists()


def _prepend(path: Path) -> str:
    import os

    rest = os.environ.get("PYTHONPATH")
    return f"{path}{os.pathsep}{rest}" if rest else str(path)


# --- the builder calls, against a stand-in for tensorrt -----------------------------------------

def fake_tensorrt(version: str = "10.9.0.34", fp16_flag: bool = True, explicit_flag: bool = True,
                  parse_errors: tuple[str, ...] = (), build_error: str | None = None,
                  builder_error: str | None = None) -> Any:
    """A stand-in for the `tensorrt` module with the TensorRT 10/11 calls build_engine makes;
    `recorded` holds what it was asked. The network's inputs are read from the ONNX file."""
    trt: Any = types.ModuleType("tensorrt")
    trt.__version__ = version
    rec: dict[str, Any] = {"flags": None, "profiles": [], "builder_flags": [], "pools": []}
    trt.recorded = rec
    severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

    class ILogger:
        Severity = severity

        def __init__(self) -> None:
            pass

    creation = {"STRONGLY_TYPED": 1, **({"EXPLICIT_BATCH": 0} if explicit_flag else {})}
    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**creation)
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32", **({"FP16": "FP16"} if fp16_flag else {}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class Network:
        def __init__(self, flags: int) -> None:
            rec["flags"] = flags
            self.inputs: list[Any] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Any:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            if parse_errors:
                self.num_errors = len(parse_errors)
                return False
            for inp in onnx.load(path).graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1
                        for d in inp.type.tensor_type.shape.dim]
                self.network.inputs.append(types.SimpleNamespace(name=inp.name, shape=dims))
            return True

        def get_error(self, i: int) -> str:
            return parse_errors[i]

    class Profile:
        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            rec["profiles"].append((name, tuple(low), tuple(opt), tuple(high)))

    class Config:
        def set_flag(self, flag: str) -> None:
            rec["builder_flags"].append(flag)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            rec["pools"].append((pool, size))

        def add_optimization_profile(self, profile: Profile) -> int:
            return 0

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger
            if builder_error:
                logger.log(severity.ERROR, builder_error)
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            if build_error:
                self.logger.log(severity.ERROR, build_error)
                return None
            return b"fake engine " * 100

    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    return trt


def _use(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Any:
    trt = fake_tensorrt(**kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_build, "_gpu_missing_reason", lambda: None)
    return trt


def test_fp32_build_profile_and_result(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    trt = _use(monkeypatch)
    plan = tmp_path / "out" / "m.plan"
    result = build_engine(tiny_onnx(tmp_path / "m.onnx"), plan, None, 16, 256)
    rec = trt.recorded
    assert rec["flags"] == 0b11  # EXPLICIT_BATCH (still in 10.x) | STRONGLY_TYPED
    assert rec["profiles"] == [("InputSpatial", (1, 22, 19, 19), (16, 22, 19, 19), (16, 22, 19, 19)),
                               ("InputGlobal", (1, 19), (16, 19), (16, 19))]
    assert rec["builder_flags"] == [] and rec["pools"] == [("WORKSPACE", 256 << 20)]
    assert plan.read_bytes() == b"fake engine " * 100
    assert result.size_bytes == 1200 and result.seconds >= 0 and result.max_batch == 16
    assert (result.precision, result.strongly_typed, result.tensorrt_version) == \
        ("fp32", True, "10.9.0.34")
    assert result.inputs == {"InputSpatial": [16, 22, 19, 19], "InputGlobal": [16, 19]}


def test_fp16_from_fp32_uses_the_flag_where_tensorrt_has_it(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    trt = _use(monkeypatch)
    result = build_engine(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.plan", "fp16", 8, None)
    assert trt.recorded["flags"] == 0b01 and trt.recorded["builder_flags"] == ["FP16"]
    assert (result.precision, result.strongly_typed) == ("fp16", False)
    assert trt.recorded["pools"] == []

    trt11 = _use(monkeypatch, version="11.4.0.106", fp16_flag=False, explicit_flag=False)
    with pytest.raises(ModelError, match="TensorRT 11.4.0.106 has no FP16 builder flag"):
        build_engine(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m11.plan", "fp16", 8, None)
    assert trt11.recorded["flags"] is None and not (tmp_path / "m11.plan").exists()


def test_quantized_files_build_strongly_typed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for kind, flag in (("int8", "--int8"), ("fp16", "--fp16")):
        trt = _use(monkeypatch, version="11.4.0.106", fp16_flag=False, explicit_flag=False)
        requested = flag.lstrip("-")
        for precision in (None, requested):
            result = build_engine(tiny_onnx(tmp_path / f"{kind}.onnx", kind), tmp_path / "q.plan",
                                  precision, 4, None)  # type: ignore[arg-type]
            assert trt.recorded["flags"] == 0b10 and trt.recorded["builder_flags"] == []
            assert (result.precision, result.strongly_typed) == (kind, True)


def test_int8_needs_a_quantized_model_before_tensorrt_is_asked(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ModelError, match=r"run `katapool model quantize --int8` first"):
        build_engine(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.plan", "int8", 16, None)
    with pytest.raises(ConfigError, match="max batch"):
        build_engine(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.plan", None, 0, None)


def test_tensorrt_words_reach_the_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    onnx_file = tiny_onnx(tmp_path / "m.onnx")
    _use(monkeypatch, parse_errors=("In node 3 (parseGraph): INVALID_NODE: Invalid Node - x",
                                    "second error"))
    with pytest.raises(ModelError) as parse:
        build_engine(onnx_file, tmp_path / "m.plan", None, 16, None)
    assert str(parse.value) == (f"TensorRT's ONNX parser rejected {onnx_file}: In node 3 "
                                "(parseGraph): INVALID_NODE: Invalid Node - x; second error")
    _use(monkeypatch, build_error="Error Code 2: OutOfMemory (Requested size was 99 bytes.)")
    with pytest.raises(ModelError, match=r"could not build an engine from m\.onnx: Error Code 2: "
                                         r"OutOfMemory \(Requested size was 99 bytes\.\)"):
        build_engine(onnx_file, tmp_path / "m.plan", None, 16, None)
    assert list(tmp_path.glob("m.plan*")) == []
    _use(monkeypatch)
    with pytest.raises(ModelError, match="without a dynamic batch dimension"):
        build_engine(tiny_onnx(tmp_path / "b1.onnx", batch=1), tmp_path / "m.plan", None, 16, None)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_trt(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_table_and_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    _use(monkeypatch)
    onnx_file, plan = tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.plan"
    args = _parse(["build-trt", str(onnx_file), "-o", str(plan), "--max-batch", "8", "--json"])
    assert args.precision is None and args.workspace_mib is None
    assert cmd_build_trt(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "fp32" and report["max_batch"] == 8
    assert report["size_bytes"] == plan.stat().st_size and report["output"] == str(plan)
    assert report["tensorrt_version"] == "10.9.0.34" and report["strongly_typed"] is True

    assert cmd_build_trt(_parse(["build-trt", str(onnx_file), "-o", str(plan), "--fp16"])) == 0
    table = capsys.readouterr().out
    for text in ("FP16", "max batch", "16", "build time", "MB", "10.9.0.34", "InputSpatial"):
        assert text in table
    with pytest.raises(SystemExit):  # one precision at a time
        _parse(["build-trt", str(onnx_file), "-o", str(plan), "--fp16", "--int8"])
    with pytest.raises(ConfigError, match="--max-batch"):
        cmd_build_trt(_parse(["build-trt", str(onnx_file), "-o", str(plan), "--max-batch", "0"]))


# --- real engines (NVIDIA GPU and the tensorrt package) -----------------------------------------

def _batch(n: int, seed: int = 3) -> dict[str, np.ndarray]:
    """n 19x19 positions: the on-board mask and random black/white stones."""
    rng = np.random.default_rng(seed)
    spatial = np.zeros((n, 22, 19, 19), dtype=np.float32)
    spatial[:, 0] = 1
    stones = rng.choice(3, size=(n, 19, 19), p=[0.7, 0.15, 0.15])
    spatial[:, 1] = stones == 1
    spatial[:, 2] = stones == 2
    return {"InputSpatial": spatial, "InputGlobal": np.zeros((n, 19), dtype=np.float32)}


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _probabilities(out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Value (win/loss/no result) and move+pass probabilities, in float32."""
    policy = np.asarray(out["OutputPolicy"], dtype=np.float32)
    moves = policy[:, 0].reshape(policy.shape[0], -1)
    passes = np.asarray(out["OutputPolicyPass"], dtype=np.float32)[:, :1]
    value = _softmax(np.asarray(out["OutputValue"], dtype=np.float32))
    return value, _softmax(np.concatenate([moves, passes], axis=1))


@pytest.fixture(scope="module")
def g170_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from katapool.models import load_model
    from katapool.models.export_onnx import export_onnx

    path = tmp_path_factory.mktemp("trt") / "g170.onnx"
    path.write_bytes(export_onnx(load_model(G170)).SerializeToString())
    return path


@pytest.fixture(scope="module")
def fp32_plan(g170_onnx: Path) -> tuple[Path, Any]:
    plan = g170_onnx.with_name("g170.fp32.plan")
    return plan, build_engine(g170_onnx, plan, "fp32", 8, None)


@needs_gpu
def test_fp32_engine_matches_onnx_runtime(g170_onnx: Path, fp32_plan: tuple[Path, Any]) -> None:
    import tensorrt

    plan, result = fp32_plan
    assert result.precision == "fp32" and result.max_batch == 8
    assert result.seconds > 0 and result.size_bytes == plan.stat().st_size > 100_000
    assert result.tensorrt_version == tensorrt.__version__
    assert result.inputs == {"InputSpatial": [8, 22, 19, 19], "InputGlobal": [8, 19]}
    feeds = _batch(3)  # fewer than the maximum: the batch is dynamic
    got, want = load_and_run(plan, feeds), _ort(g170_onnx, feeds)
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
    # TF32 stays on, as in KataGo's TensorRT backend: about 1e-3 from the CPU.
    assert np.abs(got["OutputPolicy"] - want["OutputPolicy"]).max() < 1e-2
    value, policy = _probabilities(got)
    ref_value, ref_policy = _probabilities(want)
    assert np.abs(value - ref_value).max() < 2e-3 and np.abs(policy - ref_policy).max() < 2e-3


@needs_gpu
def test_engine_refuses_batches_beyond_its_profile(fp32_plan: tuple[Path, Any]) -> None:
    with pytest.raises(ModelError, match="outside the engine's profile"):
        load_and_run(fp32_plan[0], _batch(9))
    with pytest.raises(ModelError, match="takes"):
        load_and_run(fp32_plan[0], {"InputSpatial": _batch(1)["InputSpatial"]})


@needs_gpu
def test_fp16_engine(g170_onnx: Path, fresh_kp: Katapool, tmp_path: Path) -> None:
    import tensorrt

    source = g170_onnx
    if not hasattr(tensorrt.BuilderFlag, "FP16"):  # TensorRT 11: strongly typed only
        with pytest.raises(ModelError, match="katapool model quantize --fp16"):
            build_engine(g170_onnx, tmp_path / "weak.plan", "fp16", 8, None)
        source = tmp_path / "g170.fp16.onnx"
        fresh_kp.run("model", "quantize", str(G170), "--fp16", "--positions", "0",
                     "--bench-seconds", "0", "-o", str(source), check=True)
    plan = tmp_path / "g170.fp16.plan"
    result = build_engine(source, plan, "fp16", 8, None)
    assert result.precision == "fp16" and result.size_bytes == plan.stat().st_size
    feeds = _batch(4, seed=5)
    value, policy = _probabilities(load_and_run(plan, feeds))
    ref_value, ref_policy = _probabilities(_ort(g170_onnx, feeds))
    assert np.abs(value - ref_value).max() < 0.02
    assert np.abs(policy - ref_policy).max() < 0.03


@needs_gpu
def test_cli_builds_an_engine(g170_onnx: Path, fresh_kp: Katapool, tmp_path: Path) -> None:
    plan = tmp_path / "cli.plan"
    proc = fresh_kp.run("model", "build-trt", str(g170_onnx), "-o", str(plan), "--max-batch", "4",
                        "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["precision"] == "fp32" and report["max_batch"] == 4
    assert report["size_bytes"] == plan.stat().st_size and report["seconds"] > 0
    refused = fresh_kp.run("model", "build-trt", str(g170_onnx), "-o", str(plan), "--int8")
    assert refused.returncode == 1 and "katapool model quantize --int8" in refused.stderr


@needs_gpu
def test_int8_engine_from_the_quantized_model(kp: Katapool, tmp_path: Path) -> None:
    assert CALIBRATION_GAME, f"no calibration games in {SHARED / 'sgf'}"
    qdq, plan = tmp_path / "g170.int8.onnx", tmp_path / "g170.int8.plan"
    kp.run("model", "quantize", str(G170), "--int8", "--calibration", str(CALIBRATION_GAME[0]),
           "--calibration-positions", "16", "--positions", "0", "--bench-seconds", "0",
           "-o", str(qdq), check=True)
    proc = kp.run("model", "build-trt", str(qdq), "--int8", "-o", str(plan), "--max-batch", "8",
                  "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["precision"] == "int8" and report["strongly_typed"] is True
    feeds = _batch(4, seed=7)
    value, policy = _probabilities(load_and_run(plan, feeds))
    ref_value, ref_policy = _probabilities(_ort(qdq, feeds))  # the same Q/DQ model on the CPU
    assert np.abs(value - ref_value).max() < 0.05
    assert np.abs(policy - ref_policy).max() < 0.05


def test_unsigned_int8_models_are_refused_before_tensorrt(tmp_path: Path) -> None:
    """ONNX Runtime's faster CPU flavour (UINT8 activations) is not what TensorRT takes."""
    import onnx
    import onnxruntime as ort

    from katapool.models import load_model, quantize
    from katapool.models.export_onnx import export_onnx
    from katapool.models.speed import synthetic_feeds

    proto = export_onnx(load_model(G170))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = [synthetic_feeds(session, 1, seed=i) for i in range(2)]
    for acts, refused in (("uint8", True), ("int8", False)):
        path = tmp_path / f"{acts}.onnx"
        onnx.save(quantize.to_int8(proto, feeds, quantize.Int8Options(activations=acts)), str(path))
        if refused:
            with pytest.raises(ModelError, match="signed INT8 only.*--activations int8"):
                onnx_precision(path)
        else:
            assert onnx_precision(path) == "int8"
