"""`katapool bench`: every deployment method side by side, through the real CLI, the real engine
and ONNX Runtime on this machine (short measurements: the figures themselves belong in
docs/performance.md, not in assertions)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import G170, Katapool
from katapool.bench.chart import plot_bench, wants_log_scale
from katapool.bench.engine_bench import derive_iterations, failure_line
from katapool.bench.result import BenchReport, BenchRow
from katapool.models.tensorrt_build import tensorrt_status


@pytest.fixture(scope="module")
def bench(kp: Katapool, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    chart = tmp_path_factory.mktemp("bench") / "tmp.png"
    proc = kp.run("bench", "--model", str(G170), "--batch", "2", "--seconds", "0.5", "--json",
                  "--chart", str(chart), check=True, timeout=300)
    return json.loads(proc.stdout), chart  # stdout is the JSON object and nothing else


def _row(report: dict[str, Any], backend: str, precision: str) -> dict[str, Any]:
    found = [r for r in report["rows"] if r["backend"] == backend and r["precision"] == precision]
    assert len(found) == 1, f"{backend} {precision}: {found}"
    return found[0]


def test_engine_row(bench: tuple[dict[str, Any], Path]) -> None:
    report, _ = bench
    engine = report["machine"]["katago"]
    row = _row(report, engine["backend"], "fp32")
    assert row["method"].startswith("KataGo") and row["batch"] == 2
    assert row["evals_per_second"] > 0 and row["preparation_seconds"] > 0, row
    assert row["size_bytes"] == G170.stat().st_size
    fp16 = _row(report, engine["backend"], "fp16")  # measured, failed or unavailable: never missing
    assert fp16["status"] in ("ok", "failed", "unavailable")
    if fp16["status"] != "ok":
        assert fp16["evals_per_second"] is None and fp16["note"]


def test_onnx_runtime_rows(bench: tuple[dict[str, Any], Path]) -> None:
    report, _ = bench
    rows = {p: _row(report, "onnxruntime-cpu", p) for p in ("fp32", "fp16", "int8", "int8-u8")}
    for name, row in rows.items():
        assert row["evals_per_second"] > 0, (name, row)
        assert row["preparation_seconds"] > 0, (name, row)
    assert rows["int8"]["size_bytes"] < rows["fp16"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert "synthetic calibration" in rows["int8"]["note"]


def test_litert_rows(bench: tuple[dict[str, Any], Path]) -> None:
    """A LiteRT CPU row per precision: the TFLite writer's file, measured in the interpreter."""
    report, _ = bench
    rows = {p: _row(report, "litert-cpu", p) for p in ("fp32", "fp16", "int8")}
    for name, row in rows.items():
        assert row["status"] == "ok" and row["evals_per_second"] > 0, (name, row)
        assert row["preparation_seconds"] > 0 and "write" in row["note"], (name, row)
    assert rows["int8"]["size_bytes"] < rows["fp16"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert "synthetic calibration" in rows["int8"]["note"]


def test_tensorrt_row_says_why_not(bench: tuple[dict[str, Any], Path]) -> None:
    report, _ = bench
    reason = tensorrt_status()
    if reason is None:
        pytest.skip("TensorRT is usable here: its rows are measured (benchmarks/gpu_check.sh)")
    rows = [r for r in report["rows"] if r["backend"] == "tensorrt"]
    assert len(rows) == 1 and rows[0]["status"] == "unavailable"
    assert rows[0]["evals_per_second"] is None
    assert "tensorrt" in rows[0]["note"].lower() and reason in rows[0]["note"]


def test_machine_and_settings(bench: tuple[dict[str, Any], Path]) -> None:
    report, chart = bench
    machine = report["machine"]
    assert machine["cpu"] and machine["logical_cores"] >= 1 and machine["onnxruntime"]
    assert machine["katago"]["version"]
    assert report["network"]["name"] == "g170-b6c96-s175395328-d26788732"
    assert report["settings"]["batch"] == 2 and report["chart"] == str(chart)


def test_chart_is_a_real_picture(bench: tuple[dict[str, Any], Path]) -> None:
    _, chart = bench
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 300
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20  # not one flat colour
    inked = (pixels.min(axis=2) < 200).mean()
    assert 0.02 < inked < 0.6, inked  # bars and text, on a mostly white page
    greens = ((pixels[..., 1] > pixels[..., 0] + 40) & (pixels[..., 1] > pixels[..., 2] + 40)).mean()
    assert greens > 0.01  # the ONNX Runtime bars are drawn


def test_table_on_stdout(kp: Katapool) -> None:
    proc = kp.run("bench", "--model", str(G170), "--batch", "1", "--seconds", "0.2", "--skip",
                  "engine,tensorrt", "--no-chart", check=True, timeout=120)
    assert "ONNX Runtime CPU INT8-U8" in proc.stdout and "evals/s" in proc.stdout
    methods = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert "KataGo" not in methods and "TensorRT" not in methods
    assert "wrote" not in proc.stderr  # --no-chart


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-net.bin.gz"], "no-such-net.bin.gz: no such file"),
    (["--skip", "engine,gpu"], "--skip gpu: unknown"),
    (["--skip", "engine,onnx,tflite,tensorrt"], "nothing to measure"),
    (["--batch", "0"], "--batch must be at least 1"),
])
def test_bad_input(kp: Katapool, args: list[str], message: str) -> None:
    proc = kp.run("bench", "--model", str(G170), *args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_calibration_games_of_another_size_are_refused_before_measuring(
        kp: Katapool, tmp_path: Path) -> None:
    """Every file is timed at 19x19: 9x9 games once failed each INT8 row after the others ran."""
    game = tmp_path / "nine.sgf"
    game.write_text("(;GM[1]FF[4]SZ[9]KM[7]RU[Japanese];B[ee];W[cc];B[gg])")
    proc = kp.run("bench", "--model", str(G170), "--skip", "engine,tflite,tensorrt",
                  "--calibration", str(game), "--no-chart", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no 19x19 positions (board sizes: 9)" in proc.stderr, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr


# --- pieces, without the engine ----------------------------------------------------------------

def test_iterations_follow_the_time_of_one_evaluation() -> None:
    assert derive_iterations(5.0, 8, 1.0) == 2  # a big net on a CPU: the minimum
    assert derive_iterations(5.0, 8, 0.01) == 63
    assert derive_iterations(5.0, 8, 1e-7) == 10_000
    assert derive_iterations(5.0, 8, None) == 10


def test_engine_failure_is_its_own_words() -> None:
    text = ("Warning: No FP16 support found\nterminate called after throwing an instance\n"
            "  what():  CL_BUILD_PROGRAM_FAILURE\nerror: undeclared identifier\n"
            "Device X failed to build the program\n")
    line = failure_line(text, -6)
    assert "Device X failed to build the program" in line and "CL_BUILD_PROGRAM_FAILURE" in line


def test_chart_log_scale_and_unavailable_rows(tmp_path: Path) -> None:
    rows = [BenchRow("KataGo OpenCL", "opencl", "fp32", 8, 1.6, 2.3, 11_000_000),
            BenchRow("ONNX Runtime CPU", "onnxruntime-cpu", "int8-u8", 8, 120.0, 3.0, 11_000_000),
            BenchRow("TensorRT", "tensorrt", "", 8, None, None, None,
                     "unavailable: no NVIDIA GPU visible", "unavailable")]
    report = BenchReport({"name": "net"}, {"cpu": "CPU", "logical_cores": 2, "gpus": []}, {}, rows,
                         "2026-11-29T00:00:00+00:00")
    out = plot_bench(report, tmp_path / "c.png")
    with Image.open(out) as image:
        assert image.width > 600
        pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 10  # bars and text, not a blank canvas
    assert wants_log_scale([1.6, 120.0]) and not wants_log_scale([20.0, 30.0])
    assert not wants_log_scale([])


def test_tensorrt_timing_loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The plan timing loop against stand-ins for `tensorrt` and cuda-python's runtime (named
    as such): buffers made once, every batch copied in, run, synchronized and copied out."""
    from katapool.bench import trt_timing
    from katapool.models import tensorrt_build

    calls: list[str] = []

    class FakeEngine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ["InputSpatial", "OutputValue"][i]

        def get_tensor_mode(self, name: str) -> str:
            return "in" if name.startswith("Input") else "out"

        def get_tensor_dtype(self, name: str) -> str:
            return "float"

        def create_execution_context(self) -> Any:
            engine = self

            class Context:
                def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
                    engine.batch = shape[0]
                    return True

                def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                    return (engine.batch, 3)

                def set_tensor_address(self, name: str, address: int) -> None:
                    calls.append(f"address {name}")

                def execute_async_v3(self, stream: int) -> bool:
                    calls.append("run")
                    return True

            return Context()

    class FakeLogger:
        def said(self) -> str:
            return ""

    fake_trt = types.SimpleNamespace(
        __version__="10.9", TensorIOMode=types.SimpleNamespace(INPUT="in"),
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: FakeEngine()),
        nptype=lambda dtype: np.float32)
    ok = "ok"
    fake_rt = types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=ok),
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice="up", cudaMemcpyDeviceToHost="down"),
        cudaMalloc=lambda n: (calls.append("malloc"), (ok, 1000))[1],
        cudaStreamCreate=lambda: (ok, 7),
        cudaMemcpy=lambda dst, src, n, kind: (calls.append(f"copy {kind}"), (ok,))[1],
        cudaStreamSynchronize=lambda stream: (calls.append("sync"), (ok,))[1],
        cudaFree=lambda p: calls.append("free"),
        cudaStreamDestroy=lambda s: calls.append("destroy"))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(tensorrt_build, "_cudart", lambda: fake_rt)
    monkeypatch.setattr(tensorrt_build, "make_logger", lambda trt: FakeLogger())
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"fake plan")
    rate, runs = trt_timing.plan_speed(plan, {"InputSpatial": np.zeros((4, 22, 19, 19))}, 0.01,
                                       warmup=1)
    assert runs >= 3 and rate > 0
    assert calls.count("malloc") == 2 and calls.count("free") == 2 and calls[-1] == "destroy"
    assert calls.count("run") == runs + 1 == calls.count("sync")
    assert calls.count("copy up") == calls.count("copy down") == runs + 1


def test_several_engines_side_by_side(kp: Katapool, katago: Path) -> None:
    """Each --katago gets its own engine rows (here the same build twice: two measurements)."""
    proc = kp.run("bench", "--model", str(G170), "--batch", "1", "--seconds", "0.3", "--skip",
                  "onnx,tflite,tensorrt", "--katago", str(katago), "--katago", str(katago), "--json",
                  "--no-chart", check=True, timeout=300)
    rows = json.loads(proc.stdout)["rows"]
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    assert len(fp32) == 2 and all(r["evals_per_second"] > 0 for r in fp32), rows
    assert not any(r["backend"].startswith("onnxruntime") for r in rows)
