"""``katapool bench``: the same network through every deployment method this machine has, one
after the other — the installed KataGo engine (FP32, FP16), ONNX Runtime on the CPU (FP32,
FP16, INT8 with signed and with unsigned activations), ONNX Runtime's GPU providers and
TensorRT where they exist — each with evaluations/s, preparation time and size."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from katapool.bench.engine_bench import engine_labels, engine_rows
from katapool.bench.result import BenchReport, BenchRow, unavailable
from katapool.devices import DeviceReport, discover_devices
from katapool.engine.backend import Backend
from katapool.engine.probe import EngineInfo
from katapool.errors import ConfigError, KatapoolError

PARTS = ("engine", "onnx", "tflite", "tensorrt")
SYNTHETIC_POSITIONS = 8
CALIBRATION_POSITIONS = 16
BENCH_BOARD = 19  # every file is exported and timed at KataGo's usual board size
SYNTHETIC_NOTE = "speed only: synthetic calibration; accuracy: katapool model quantize"
# ONNX Runtime GPU providers: (method, backend, precisions measured).
GPU_PROVIDERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "CUDAExecutionProvider": ("ONNX Runtime CUDA", "onnxruntime-cuda", ("fp32", "fp16")),
    "TensorrtExecutionProvider": ("ONNX Runtime TensorRT", "onnxruntime-tensorrt",
                                  ("fp32", "fp16", "int8")),
}

Step = Callable[[str], None]


@dataclass
class BenchSettings:
    model: Path
    batch: int = 8
    seconds: float = 5.0
    iterations: int | None = None  # benchmarknn's; derived from a first evaluation when None
    skip: frozenset[str] = frozenset()
    calibration: list[Path] = field(default_factory=list)

    def check(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"--batch must be at least 1 (got {self.batch})")
        if not self.seconds > 0:
            raise ConfigError(f"--seconds must be more than 0 (got {self.seconds})")
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError(f"--iterations must be at least 1 (got {self.iterations})")
        unknown = sorted(self.skip - set(PARTS))
        if unknown:
            raise ConfigError(f"--skip {','.join(unknown)}: unknown; use any of {', '.join(PARTS)}")
        if set(PARTS) <= self.skip:
            raise ConfigError("--skip leaves nothing to measure")
        for game in self.calibration:
            if not game.is_file():
                raise ConfigError(f"--calibration {game}: no such file")


def parse_skip(values: Sequence[str]) -> frozenset[str]:
    """``--skip engine,onnx`` (the flag may also repeat)."""
    return frozenset(w.strip().lower() for v in values for w in v.split(",") if w.strip())


# --- the ONNX variants of the network --------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    precision: str  # fp32, fp16, int8 (signed activations), int8-u8 (unsigned activations)
    data: bytes
    seconds: float  # export + conversion
    detail: str  # how the seconds split


@dataclass
class Variants:
    """The network exported once and converted to each precision; a conversion that fails
    leaves its reason instead."""

    made: dict[str, Variant] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    calibration_note: str = ""
    fp32_session: Any = None
    proto: Any = None  # the FP32 export, for the TFLite writer
    calibration_feeds: list[dict[str, np.ndarray]] = field(default_factory=list)

    def feeds(self, batch: int) -> dict[str, np.ndarray]:
        """One batch of plausible inputs (needs the FP32 export)."""
        from katapool.models.speed import synthetic_feeds

        assert self.fp32_session is not None, "no FP32 export"
        return synthetic_feeds(self.fp32_session, batch)

    def missing_row(self, method: str, backend: str, name: str, batch: int) -> BenchRow:
        """The row of a precision whose file could not be made, with the reason."""
        return BenchRow(method, backend, name, batch, None, None, None,
                        self.failed.get(name, "not made"), "failed")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer prints progress and advice; the bench has its own progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


Calibrate = Callable[[bytes], list[dict[str, np.ndarray]]]


def make_variants(model_path: Path, on_step: Step, calibrate: Calibrate | None) -> Variants:
    """FP32 export, FP16 and both INT8 flavours; ``calibrate`` gives real input feeds (else
    a handful of synthetic positions: enough for speed, not for accuracy)."""
    import onnxruntime as ort

    from katapool.models import load_model, quantize
    from katapool.models.export_onnx import export_onnx
    from katapool.models.quantize import Int8Options
    from katapool.models.speed import synthetic_feeds

    out = Variants()
    on_step("ONNX: exporting the network")
    try:
        began = time.perf_counter()
        proto = export_onnx(load_model(model_path), board=BENCH_BOARD)
        fp32 = proto.SerializeToString()
        export_s = time.perf_counter() - began
    except Exception as exc:  # a network the exporter does not cover, memory, ...
        for name in ("fp32", "fp16", "int8", "int8-u8"):
            out.failed[name] = f"ONNX export failed: {exc}"
        return out
    out.made["fp32"] = Variant("fp32", fp32, export_s, f"export {export_s:.2f} s")
    out.proto = proto
    out.fp32_session = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"])

    on_step("ONNX: FP16 conversion")
    try:
        began = time.perf_counter()
        fp16 = quantize.to_fp16(proto).SerializeToString()
        took = time.perf_counter() - began
        out.made["fp16"] = Variant("fp16", fp16, export_s + took,
                                   f"export {export_s:.2f} s + FP16 conversion {took:.2f} s")
    except Exception as exc:  # ONNX Runtime's converter raises anything
        out.failed["fp16"] = f"FP16 conversion failed: {exc}"

    if calibrate is not None:
        on_step("ONNX: calibration inputs from the engine (real positions)")
        try:
            began = time.perf_counter()
            feeds = calibrate(fp32)
        except KatapoolError as exc:
            for name in ("int8", "int8-u8"):
                out.failed[name] = f"no calibration inputs: {exc}"
            return out
        out.calibration_note = (f"calibrated on {len(feeds)} positions of the given games (their "
                                f"inputs from the engine: {time.perf_counter() - began:.1f} s, "
                                "not counted)")
    else:
        feeds = [synthetic_feeds(out.fp32_session, 1, seed=i) for i in range(SYNTHETIC_POSITIONS)]
        out.calibration_note = SYNTHETIC_NOTE
    out.calibration_feeds = feeds
    for name, activations in (("int8", "int8"), ("int8-u8", "uint8")):
        on_step(f"ONNX: INT8 quantization ({activations} activations, {len(feeds)} positions)")
        try:
            began = time.perf_counter()
            with _quiet():
                data = quantize.to_int8(proto, feeds, Int8Options(activations=activations))
            int8 = data.SerializeToString()
            took = time.perf_counter() - began
            out.made[name] = Variant(name, int8, export_s + took,
                                     f"export {export_s:.2f} s + quantization {took:.2f} s")
        except Exception as exc:
            out.failed[name] = f"INT8 quantization failed: {exc}"
    return out


# --- ONNX Runtime ----------------------------------------------------------------------------

_ORT_NOTES = {
    "fp16": "FP16 file; ONNX Runtime's CPU provider has few FP16 kernels",
    "int8": "Q/DQ, symmetric s8 activations (as TensorRT takes them)",
    "int8-u8": "Q/DQ, u8 activations (ONNX Runtime's fused U8S8 kernels on x86)",
}


def ort_cpu_rows(variants: Variants, batch: int, seconds: float, on_step: Step) -> list[BenchRow]:
    from katapool.models.speed import ort_speed

    method, backend = "ONNX Runtime CPU", "onnxruntime-cpu"
    rows = []
    for name in ("fp32", "fp16", "int8", "int8-u8"):
        variant = variants.made.get(name)
        if variant is None:
            rows.append(variants.missing_row(method, backend, name, batch))
            continue
        on_step(f"{method} {name.upper()}: batch {batch}, {seconds:g} s")
        try:
            speed = ort_speed(variant.data, batch, seconds)
        except Exception as exc:  # a kernel ONNX Runtime lacks, memory, ...
            rows.append(BenchRow(method, backend, name, batch, None, None, len(variant.data),
                                 f"ONNX Runtime failed: {exc}", "failed"))
            continue
        notes = [_ORT_NOTES.get(name, ""),
                 f"{variant.detail} + session {speed.session_seconds:.2f} s"]
        if name.startswith("int8"):
            notes.append(variants.calibration_note)
        rows.append(BenchRow(method, backend, name, batch, speed.evals_per_second,
                             variant.seconds + speed.session_seconds, len(variant.data),
                             "; ".join(n for n in notes if n)))
    return rows


# --- LiteRT (TFLite) ------------------------------------------------------------------------

_LITERT_NOTES = {
    "fp32": "katapool's TFLite writer; XNNPACK CPU delegate, all cores",
    "fp16": "FP16 weights, FP32 arithmetic on the CPU (GPU delegates compute in FP16)",
    "int8": "trunk convolutions and matrices INT8 (QUANTIZE/DEQUANTIZE around each)",
}


def litert_rows(variants: Variants, batch: int, seconds: float, on_step: Step) -> list[BenchRow]:
    """The TFLite file per precision in the LiteRT interpreter on the CPU (what an Android
    app gets without a GPU/NNAPI delegate)."""
    import os

    method, backend = "LiteRT CPU", "litert-cpu"
    try:
        from katapool.models.export_tflite import require_writer, write_tflite
        from katapool.models.litert import _interpreter_class, litert_speed
        from katapool.models.oplist import from_onnx
        from katapool.models.tflite_int8 import int8_tflite

        require_writer()
        _interpreter_class()
    except KatapoolError as exc:
        return [unavailable(method, backend, batch, str(exc))]
    if variants.proto is None:
        return [variants.missing_row(method, backend, p, batch) for p in ("fp32", "fp16", "int8")]
    rows = []
    export_s = variants.made["fp32"].seconds
    ops = from_onnx(variants.proto)
    for name in ("fp32", "fp16", "int8"):
        on_step(f"{method} {name.upper()}: writing the file, batch {batch}, {seconds:g} s")
        try:
            began = time.perf_counter()
            data = (int8_tflite(ops, variants.proto, variants.calibration_feeds) if name == "int8"
                    else write_tflite(ops, name))
            written = time.perf_counter() - began
            speed = litert_speed(data, batch, seconds, threads=os.cpu_count())
        except Exception as exc:  # a LiteRT kernel refusing the file, memory, ...
            rows.append(BenchRow(method, backend, name, batch, None, None, None,
                                 f"LiteRT failed: {exc}", "failed"))
            continue
        notes = [_LITERT_NOTES[name], f"export {export_s:.2f} s + write {written:.2f} s + "
                 f"interpreter {speed.session_seconds:.2f} s"]
        if name == "int8":
            notes.append(variants.calibration_note)
        rows.append(BenchRow(method, backend, name, batch, speed.evals_per_second,
                             export_s + written + speed.session_seconds, len(data),
                             "; ".join(notes)))
    return rows


def provider_speed(data: bytes, provider: str, options: dict[str, Any], feeds: dict[str, np.ndarray],
                   seconds: float, warmup: int = 3) -> tuple[float, float]:
    """(evaluations/s, session seconds) on one ONNX Runtime execution provider, with the CPU
    fallback switched off so that every node runs where the row says."""
    import onnxruntime as ort

    from katapool.models.speed import time_runs

    began = time.perf_counter()
    session_options = ort.SessionOptions()
    # A node the GPU provider cannot take is an error, not a silent CPU fallback.
    session_options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = ort.InferenceSession(data, session_options, providers=[(provider, options)])
    session_s = time.perf_counter() - began
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"ONNX Runtime fell back to {session.get_providers()[0]}")
    runs, elapsed = time_runs(lambda: session.run(None, feeds), seconds, warmup)
    batch = int(next(iter(feeds.values())).shape[0])
    return batch * runs / elapsed, session_s


def ort_gpu_rows(variants: Variants, batch: int, seconds: float, report: DeviceReport,
                 on_step: Step) -> list[BenchRow]:
    import onnxruntime as ort

    available = [p for p in GPU_PROVIDERS if p in ort.get_available_providers()]
    if not available:
        if report.nvidia:  # a GPU ONNX Runtime cannot use: say what is missing
            return [unavailable("ONNX Runtime GPU", "onnxruntime-gpu", batch,
                                "this onnxruntime has no CUDA or TensorRT provider (pip install "
                                "onnxruntime-gpu)")]
        return []
    rows = []
    if "fp32" not in variants.made:
        return [BenchRow(GPU_PROVIDERS[p][0], GPU_PROVIDERS[p][1], "", batch, None, None, None,
                         variants.failed["fp32"], "failed") for p in available]
    feeds = variants.feeds(batch)
    for provider in available:
        method, backend, precisions = GPU_PROVIDERS[provider]
        for name in precisions:
            variant = variants.made.get(name)
            if variant is None:
                rows.append(variants.missing_row(method, backend, name, batch))
                continue
            options: dict[str, Any] = {}
            if provider == "TensorrtExecutionProvider" and name == "int8":
                options["trt_int8_enable"] = True
            on_step(f"{method} {name.upper()}: batch {batch}, {seconds:g} s")
            try:
                rate, session_s = provider_speed(variant.data, provider, options, feeds, seconds)
            except Exception as exc:
                rows.append(BenchRow(method, backend, name, batch, None, None, len(variant.data),
                                     f"failed: {exc}", "failed"))
                continue
            rows.append(BenchRow(method, backend, name, batch, rate, variant.seconds + session_s,
                                 len(variant.data),
                                 f"{variant.detail} + session {session_s:.2f} s"))
    return rows


# --- TensorRT --------------------------------------------------------------------------------

def tensorrt_rows(variants: Variants | None, batch: int, seconds: float, workdir: Path,
                  on_step: Step, make: Callable[[], Variants]) -> list[BenchRow]:
    from katapool.models.tensorrt_build import build_engine, tensorrt_status

    method, backend = "TensorRT", "tensorrt"
    reason = tensorrt_status()
    if reason is not None:
        return [unavailable(method, backend, batch, reason)]
    from katapool.bench.trt_timing import plan_speed

    variants = variants or make()
    if "fp32" not in variants.made:
        return [BenchRow(method, backend, "", batch, None, None, None, variants.failed["fp32"],
                         "failed")]
    feeds = variants.feeds(batch)
    rows = []
    for name in ("fp32", "fp16", "int8"):  # INT8 from the s8 Q/DQ file: what TensorRT takes
        variant = variants.made.get(name)
        if variant is None:
            rows.append(variants.missing_row(method, backend, name, batch))
            continue
        on_step(f"{method} {name.upper()}: building the plan (max batch {batch})")
        src, plan = workdir / f"net-{name}.onnx", workdir / f"net-{name}.plan"
        src.write_bytes(variant.data)
        try:
            built = build_engine(src, plan, name, max_batch=batch)
            on_step(f"{method} {name.upper()}: batch {batch}, {seconds:g} s")
            rate, _ = plan_speed(plan, feeds, seconds)
        except Exception as exc:  # TensorRT's and CUDA's own errors come in many types
            rows.append(BenchRow(method, backend, name, batch, None, None, None,
                                 f"failed: {exc}", "failed"))
            continue
        finally:
            plan.unlink(missing_ok=True)
        note = (f"TensorRT {built.tensorrt_version}, plan built in {built.seconds:.1f} s "
                f"from the {name.upper()} ONNX file ({variant.detail})")
        if name == "int8":
            note += f"; {variants.calibration_note}"
        # Preparation as for the ONNX Runtime rows: making the ONNX file, then the plan.
        rows.append(BenchRow(method, backend, name, batch, rate, variant.seconds + built.seconds,
                             built.size_bytes, note))
    return rows


# --- the machine -----------------------------------------------------------------------------

def machine_info(report: DeviceReport, info: EngineInfo | None) -> dict[str, Any]:
    import onnxruntime as ort

    from katapool.models.tensorrt_build import tensorrt_status

    cpu = report.cpu
    trt_reason = tensorrt_status()
    trt_version = None
    if trt_reason is None:
        import tensorrt

        trt_version = str(getattr(tensorrt, "__version__", "unknown"))
    return {
        "cpu": cpu.name if cpu else platform.processor() or "CPU",
        "logical_cores": os.cpu_count(),
        "physical_cores": cpu.cores if cpu else None,
        "ram_mib": report.ram_mib,
        "gpus": [f"{g.name} ({g.memory_mib} MiB)" if g.memory_mib else g.name
                 for g in report.nvidia],
        "opencl_devices": [d.name for d in report.opencl],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "tensorrt": trt_version,
        "tensorrt_status": trt_reason,
        "katago": None if info is None else {"version": info.version,
                                             "backend": info.backend.value,
                                             "path": str(info.path)},
    }


# --- the whole run ---------------------------------------------------------------------------

def _real_calibration(settings: BenchSettings, info: EngineInfo, report: DeviceReport,
                      workdir: Path) -> Calibrate:
    def calibrate(fp32: bytes) -> list[dict[str, np.ndarray]]:
        from katapool.config.build import build_config
        from katapool.config.settings import Mode
        from katapool.models import load_model
        from katapool.models.precision_check import calibration_feeds
        from katapool.models.validate import sample_positions, with_explicit_rules

        games = workdir / "games"
        games.mkdir(exist_ok=True)
        positions = sample_positions(with_explicit_rules(settings.calibration, games),
                                     CALIBRATION_POSITIONS, board=BENCH_BOARD)
        cfg = workdir / "calibration.cfg"
        cfg.write_text(build_config(mode=Mode.GTP, info=info, model=settings.model,
                                    preset="desktop", log_dir=workdir / "logs",
                                    report=report).text)
        return calibration_feeds(load_model(settings.model), fp32, info.path, cfg, positions,
                                 None, workdir)

    return calibrate


def run_bench(settings: BenchSettings, info: EngineInfo | None, engine_problem: str | None,
              on_step: Step, on_row: Callable[[BenchRow], None] = lambda row: None,
              other_engines: Sequence[EngineInfo] = ()) -> BenchReport:
    """Measure every method not skipped. ``info`` is the engine (None when there is none:
    ``engine_problem`` says why); the engine is also what real calibration positions need.
    ``other_engines``: more KataGo builds measured beside it."""
    from katapool.models import load_model, summarize

    settings.check()
    if settings.calibration and info is None:
        raise ConfigError(f"--calibration needs the KataGo engine to read the games: "
                          f"{engine_problem or 'no engine'}")
    if settings.calibration:
        from katapool.models.validate import sample_positions

        # before any measuring: games of another size would fail each INT8 row, minutes later
        sample_positions(list(settings.calibration), 1, board=BENCH_BOARD)
    summary = summarize(load_model(settings.model))
    on_step("looking at this machine's devices")
    engines = [info, *other_engines] if info is not None else []
    # OpenCL devices are listed by an OpenCL engine: any of those measured, not only the first.
    lister = next((e for e in engines if e.backend is Backend.OPENCL), None)
    report = discover_devices(lister.path if lister else None, settings.model,
                              opencl=lister is not None)
    result = BenchReport(
        network={"name": summary["name"], "file": str(settings.model),
                 "size_bytes": settings.model.stat().st_size,
                 "parameters": summary["parameters"]},
        machine=machine_info(report, info),
        settings={"batch": settings.batch, "seconds": settings.seconds,
                  "iterations": settings.iterations, "skip": sorted(settings.skip),
                  "calibration": [str(g) for g in settings.calibration]},
        date=datetime.now(UTC).isoformat(timespec="seconds"),
    )

    def add(rows: list[BenchRow]) -> None:
        for row in rows:
            result.rows.append(row)
            on_row(row)

    with tempfile.TemporaryDirectory(prefix="katapool-bench-") as tmp:
        workdir = Path(tmp)
        if "engine" not in settings.skip:
            if info is None:
                add([unavailable("KataGo", "katago", settings.batch,
                                 engine_problem or "no engine")])
            else:
                for engine, label in zip(engines, engine_labels(engines), strict=True):
                    add(engine_rows(engine, settings.model, report, settings.batch,
                                    settings.seconds, settings.iterations, workdir, on_step,
                                    method=label))
        calibrate = (_real_calibration(settings, info, report, workdir)
                     if settings.calibration and info is not None else None)
        variants: Variants | None = None

        def make() -> Variants:
            return make_variants(settings.model, on_step, calibrate)

        if "onnx" not in settings.skip or "tflite" not in settings.skip:
            variants = make()
        if "onnx" not in settings.skip:
            assert variants is not None
            add(ort_cpu_rows(variants, settings.batch, settings.seconds, on_step))
            add(ort_gpu_rows(variants, settings.batch, settings.seconds, report, on_step))
        if "tflite" not in settings.skip:
            assert variants is not None
            add(litert_rows(variants, settings.batch, settings.seconds, on_step))
        if "tensorrt" not in settings.skip:
            add(tensorrt_rows(variants, settings.batch, settings.seconds, workdir, on_step, make))
    return result
