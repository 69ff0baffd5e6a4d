"""`katapool prepare --measure`: settings chosen by running the real engine's own tools on this
machine's device (PoCL), stored as a profile, then used by config generation.

One real measuring run (9x9, batch sizes 1 and 2, thread counts 1 and 2, a few visits) is
shared by the module; it goes through a wrapper that logs each engine command line, so a
second run can be shown to start no measuring tool. The profiles live in the module's own
data directory: the session's (`kp`) must keep its rule-sized configs.
"""
# ruff: noqa: E501  (captured engine output keeps its own long lines)

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_prepare import logging_engine

from conftest import G170, Katapool, _env
from katapool.config.profile import Profile
from katapool.engine.measure import (
    ToolRun,
    fp16_failure,
    parse_benchmark,
    parse_benchmarknn,
    parse_gpu_error,
)

MEASURE = ["prepare", "--fast", "--measure", "--model", str(G170), "--board-size", "9",
           "--measure-batches", "1,2", "--measure-threads", "1,2", "--measure-visits", "12",
           "--measure-positions", "1", "--measure-iterations", "4"]
TOOLS = ("testgpuerror", "benchmarknn", "benchmark ")


@dataclass
class Measured:
    kp: Katapool
    calls: Path  # every engine command line, in order
    stdout: str
    stderr: str

    def profile(self, mode: str) -> Profile:
        [path] = (self.kp.data_dir / "tuning" / "profiles").glob(f"*-{mode}-g170-*.json")
        return Profile.model_validate_json(path.read_text())

    def tool_runs(self) -> list[str]:
        calls = self.calls.read_text().splitlines() if self.calls.exists() else []
        return [c for c in calls if c.startswith(TOOLS)]


@pytest.fixture(scope="module")
def measured(katago: Path, tmp_path_factory: pytest.TempPathFactory) -> Measured:
    home = tmp_path_factory.mktemp("measure")
    wrapper, calls = logging_engine(katago, home)
    kp = Katapool(_env(home / "data", home / "cache"), home / "data")
    kp.run("engine", "install", "--path", str(wrapper), "--name", "logged", check=True)
    proc = kp.run(*MEASURE, check=True, timeout=600)
    return Measured(kp, calls, proc.stdout, proc.stderr)


def _decisions(profile: Profile) -> dict[str, Any]:
    return {d.setting: d for d in profile.decisions}


def test_measure_records_fp32_with_the_measured_reason_and_timed_choices(
        measured: Measured) -> None:
    runs = measured.tool_runs()
    assert sum(r.startswith("testgpuerror") for r in runs) == 1, runs
    assert sum(r.startswith("benchmarknn") for r in runs) == 2, runs  # batch 1 and 2
    assert any(r.startswith("benchmark ") for r in runs), runs
    for mode in ("analysis", "gtp"):
        profile = measured.profile(mode)
        assert profile.mode.value == mode and profile.device.spec == "opencl:0"
        assert profile.network.name == G170.name.removesuffix(".bin.gz")
        fp16, batch, threads = (_decisions(profile)[k] for k in
                                ("useFP16", "nnMaxBatchSize", "numSearchThreads"))
        # PoCL has no FP16: the FP16 run fails, and the engine's own words say why.
        assert fp16.value is False and fp16.reason.startswith("FP32, because"), fp16.reason
        assert fp16.figures["exit_code"] != 0 or fp16.figures["engine_fp16"]["compute"] is False
        assert "FP16" in fp16.reason and len(fp16.reason) > 40
        assert batch.value in (1, 2) and "nnEvals/s" in batch.reason
        assert set(batch.figures["candidates"]) == {"1", "2"}
        assert all(c["nn_evals_per_s"] > 0 for c in batch.figures["candidates"].values())
        assert threads.value in (1, 2) and "visits/s" in threads.reason
        assert set(threads.figures["candidates"]) == {"1", "2"}
        assert all(c["visits_per_s"] > 0 for c in threads.figures["candidates"].values())
        assert threads.figures["batch"] == batch.value
    assert re.search(r"opencl:0\s.*analysis\s.*measured", measured.stdout), measured.stdout
    assert "useFP16 = false: FP32, because" in measured.stderr  # the progress on stderr


def test_generate_uses_the_profile_and_explains_it(measured: Measured, tmp_path: Path) -> None:
    profile = measured.profile("gtp")
    values = profile.values()
    cfg = tmp_path / "gtp.cfg"
    measured.kp.run("config", "generate", "--mode", "gtp", "--model", str(G170), "-o", str(cfg),
                    check=True)
    text = cfg.read_text()
    assert re.search(r"^# Measured profile: .*gtp-g170.*\.json \(measured ", text, re.M), text
    assert re.search(r"^#   useFP16 = false: FP32, because", text, re.M), text
    assert f"\nnnMaxBatchSize = {values['nnMaxBatchSize']}\n" in text
    assert f"\nnumSearchThreads = {values['numSearchThreads']}\n" in text
    assert "\nopenclUseFP16 = false\n" in text

    explain = measured.kp.run("config", "generate", "--mode", "gtp", "--model", str(G170),
                              "--explain", "--set", "maxVisits=50", check=True).stdout
    assert re.search(rf"^nnMaxBatchSize = {values['nnMaxBatchSize']}  \[profile\]  latency: ",
                     explain, re.M), explain
    assert re.search(r"^    candidate 2: nn_evals_per_s=[\d.]+, median_batch_ms=", explain, re.M)
    assert re.search(r"^useFP16 = false  \[profile\]  FP32, because", explain, re.M), explain
    assert re.search(r"^nnCacheSizePowerOfTwo = \d+  \[rule\]", explain, re.M), explain
    assert "profile: " in explain and "# Generated" not in explain  # no config on stdout

    # An explicit override still wins over the measurement, and says what it beat.
    other = 3 if values["numSearchThreads"] != 3 else 5
    over = measured.kp.run("config", "generate", "--mode", "analysis", "--model", str(G170),
                           "--explain", "--set", f"numAnalysisThreads={other}",
                           check=True).stdout
    assert re.search(rf"^numAnalysisThreads = {other}  \[override\]", over, re.M), over
    assert re.search(r"^numSearchThreads = \d+  \[profile\]  throughput: ", over, re.M), over


def test_second_measure_reuses_the_profile(measured: Measured) -> None:
    profiles = sorted((measured.kp.data_dir / "tuning" / "profiles").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in profiles}
    runs = len(measured.tool_runs())
    again = measured.kp.run(*MEASURE, check=True)
    assert re.search(r"opencl:0\s.*gtp\s.*up-to-date", again.stdout), again.stdout
    assert len(measured.tool_runs()) == runs, "the second run started a measuring tool"
    assert {p: p.stat().st_mtime_ns for p in profiles} == before
    listed = json.loads(measured.kp.run("devices", "--profile", "--json", check=True).stdout)
    assert sorted(p["mode"] for p in listed["profiles"]) == ["analysis", "gtp"]
    assert {p["status"] for p in listed["profiles"]} == {"current"}
    doctor = json.loads(measured.kp.run("doctor", "--json").stdout)
    [line] = [c for c in doctor["checks"] if c["name"] == "profiles"]
    assert line["status"] == "ok" and "2 measured profile(s)" in line["detail"], line
    assert "opencl:0 gtp g170-b6c96-s175395328-d26788732: useFP16 false" in line["detail"]


def test_tune_measures_into_the_profile_store(measured: Measured, tmp_path: Path) -> None:
    """`config generate --tune` (once a thread benchmark cached in threads.json) measures as
    `prepare --measure` does; here the profile is current, so no tool runs."""
    runs = len(measured.tool_runs())
    cfg = tmp_path / "t.cfg"
    proc = measured.kp.run("config", "generate", "--mode", "gtp", "--model", str(G170), "--tune",
                           "-o", str(cfg), check=True)
    assert "opencl:0 (gtp): useFP16 = false" in " ".join(proc.stderr.split()), proc.stderr
    assert "up-to-date" in proc.stderr and len(measured.tool_runs()) == runs
    threads = measured.profile("gtp").values()["numSearchThreads"]
    assert f"\nnumSearchThreads = {threads}\n" in cfg.read_text()


@pytest.fixture
def copied(measured: Measured, tmp_path: Path) -> Katapool:
    """The measured data directory, copied: a test may change its profiles."""
    shutil.copytree(measured.kp.data_dir, tmp_path / "data", symlinks=True)
    return Katapool(_env(tmp_path / "data", tmp_path / "cache"), tmp_path / "data")


@pytest.mark.parametrize(("field", "change", "why"), [
    ("engine", {"version": "1.17.0"}, "engine changed (measured with KataGo 1.17.0"),
    ("network", {"file": {"size": 1}}, "network changed"),
])
def test_a_stale_profile_is_ignored_with_a_note(copied: Katapool, field: str,
                                                change: dict[str, Any], why: str) -> None:
    [path] = (copied.data_dir / "tuning" / "profiles").glob("*-gtp-*.json")
    data = json.loads(path.read_text())
    for key, value in change.items():
        data[field][key] = {**data[field][key], **value} if isinstance(value, dict) else value
    path.write_text(json.dumps(data))
    proc = copied.run("config", "generate", "--mode", "gtp", "--model", str(G170), "--explain",
                      check=True)
    said = " ".join(proc.stderr.split())
    assert why in said and "re-measure with `katapool prepare --measure" in said, said
    assert re.search(r"^nnMaxBatchSize = \d+  \[rule\]", proc.stdout, re.M), proc.stdout
    assert "Measured profile" not in proc.stdout
    assert f"note: profile {path} ignored: {why}" in proc.stdout


def test_gtp_picks_up_a_new_profile_through_its_start_cache(copied: Katapool) -> None:
    [path] = (copied.data_dir / "tuning" / "profiles").glob("*-gtp-*.json")
    data = json.loads(path.read_text())
    path.unlink()  # the profiles directory stays (the analysis profile is in it)

    def threads() -> int:
        answer = _gtp(copied, "kata-get-param numSearchThreads")
        assert answer.startswith("= "), answer
        return int(answer[2:])

    by_rule = threads()
    assert threads() == by_rule  # from the start cache
    for decision in data["decisions"]:
        if decision["setting"] == "numSearchThreads":
            decision["value"] = by_rule + 1
    path.write_text(json.dumps(data))  # a new profile: the cached start must not be reused
    assert threads() == by_rule + 1


def test_analysis_measure_uses_a_current_profile_without_running_tools(
        measured: Measured) -> None:
    """`katapool analysis --measure`: the profile exists and matches, so no tool runs; what the
    step says goes to stderr and stdout carries only the protocol."""
    before = len(measured.tool_runs())
    proc = subprocess.run([sys.executable, "-m", "katapool", "analysis", "--measure",
                           "-model", str(G170)],
                          input='{"id": "v", "action": "query_version"}\n', capture_output=True,
                          text=True, timeout=120, env=measured.kp.env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(measured.tool_runs()) == before
    batch = _decisions(measured.profile("analysis"))["nnMaxBatchSize"].value
    assert re.search(rf"analysis: up-to-date \(useFP16 false, nnMaxBatchSize {batch},",
                     proc.stderr), proc.stderr
    [line] = proc.stdout.splitlines()
    assert json.loads(line)["id"] == "v"


def _gtp(kp: Katapool, command: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "katapool", "gtp", "-model", str(G170)],
                          input=f"{command}\nquit\n", capture_output=True, text=True,
                          timeout=120, env=kp.env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()[0]


@pytest.mark.parametrize(("extra", "needle"), [
    (["--measure", "--device", "opencl:7"], "device 'opencl:7' not found on this machine"),
    (["--measure-batches", "2"], "--measure-batches only apply with --measure"),
    (["--measure", "--measure-threads", "0"], "must be at least 1"),
])
def test_bad_measure_input_gets_a_clear_error(measured: Measured, extra: list[str],
                                              needle: str) -> None:
    proc = measured.kp.run("prepare", "--fast", "--model", str(G170), *extra)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr


# --- the parsers, on output captured from KataGo 1.18.1 (OpenCL on PoCL) --------------------

FP16_CRASH = """\
: Loaded tuning parameters from: /data/tuning/reference-v13.txt
: Warning: No FP16 support found at all on this device during tuning, but useFP16 is true, trying fp16 storage
14 errors generated.
terminate called after throwing an instance of 'OpenCLHelpers::CompileError'
  what():  CL_BUILD_PROGRAM_FAILURE
BUILD LOG FOR xgemmDirectProgram ON DEVICE 0
error: /root/.cache/pocl/kcache/tempfile_1Lxfzt.cl:490:17 <Spelling=/lib/x86_64-linux-gnu/../../share/pocl/include/_builtin_renames.h:201:24>: use of undeclared identifier '_cl_vloada_half'
Device pthread-haswell-AMD EPYC failed to build the program
"""

FP32_ERRORS = """\
: OpenCL backend thread 0: Device 0 FP16Storage false FP16Compute false FP16TensorCores false FP16TensorCoresFor1x1 false
: fp32 error vs reference winrateError:                        0.00000%  0.00000%  0.00000%  0.00000%
: fp32 error vs reference policyKLDiv:                         0.000000  0.000000  0.000000  0.000000
: fp32 error vs reference closest margin:                      0x of limit (winrateError 99%), 0x of limit (winrateError max)
: batched fp32 error vs reference ownershipError:              0.00000c  0.00000c  0.00000c  0.00000c
"""

BENCHMARK = """\
numSearchThreads =  1: 0 / 2 positions, visits/s = -nan (0.0 secs)
numSearchThreads =  1: 2 / 2 positions, visits/s = 31.24 nnEvals/s = 30.20 nnBatches/s = 30.20 avgBatchSize = 1.00 (1.9 secs) (EloDiff baseline)
numSearchThreads =  4: 2 / 2 positions, visits/s = 35.88 nnEvals/s = 35.88 nnBatches/s = 17.40 avgBatchSize = 2.06 (1.8 secs) (EloDiff +18)
numSearchThreads =  1: (baseline)
numSearchThreads =  4:   +18 Elo (recommended)
"""

BENCHMARKNN = ('{"modelName":"g170-b6c96-s175395328-d26788732","usingFP16":false,"batchSize":4,'
               '"numThreads":1,"perThreadMedianMs":[103.439171],'
               '"sumMedianNNEvalsPerSec":38.67007016}')


def test_parsers_read_real_engine_output() -> None:
    why = fp16_failure(ToolRun(["katago"], -6, FP16_CRASH, 1.6))
    assert why == ("FP16 kernels failed (CL_BUILD_PROGRAM_FAILURE; first error: use of "
                   "undeclared identifier '_cl_vloada_half'; 14 errors), the OpenCL tuner "
                   "found no FP16 support on this device, killed by SIGABRT")
    report = parse_gpu_error(FP32_ERRORS)
    assert not report.compared_fp16
    assert report.errors["fp32"]["winrateError"] == [0.0] * 4
    assert report.errors["batched fp32"]["ownershipError"] == [0.0] * 4
    assert report.margins["fp32"]["p99_metric"] == "winrateError"
    assert report.fp16_flags == {"storage": False, "compute": False, "tensor_cores": False}
    bench = parse_benchmark(BENCHMARK)
    assert [(r.threads, r.visits_per_s, r.avg_batch, r.elo_vs_first) for r in bench.rows] == \
        [(1, 31.24, 1.0, 0), (4, 35.88, 2.06, 18)]
    assert bench.recommended == 4
    timing = parse_benchmarknn(": some log line\n" + BENCHMARKNN)
    assert timing is not None and (timing.batch, timing.fp16) == (4, False)
    assert timing.nn_evals_per_s == pytest.approx(38.67007016) and timing.median_batch_ms > 100
