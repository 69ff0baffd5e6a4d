"""Edge cases found in review: each once misbehaved (traceback, wrong config, lost data)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import platform
import shlex
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from pool_helpers import Collector
from rich.console import Console

from conftest import G170, SHORT_SGF, Katapool
from katapool.config.build import build_config
from katapool.config.generate import ConfigRequest, cuda_index, generate_settings
from katapool.config.presets import load_preset
from katapool.config.settings import Mode
from katapool.devices.model import Device, DeviceKind, DeviceReport
from katapool.engine.analysis import AnalysisEngine
from katapool.engine.backend import Backend
from katapool.engine.download import download
from katapool.engine.install import _extract_zip
from katapool.engine.probe import EngineInfo
from katapool.engine.process import STREAM_LIMIT
from katapool.errors import ConfigError, EngineTerminatedError, GameRecordError, InstallError
from katapool.game.record import parse_sgf
from katapool.pool import Pool, PoolPolicy
from katapool.pool.member import LocalMember

STREAM_LIMIT_MB = STREAM_LIMIT >> 20
GPU_A = Device(DeviceKind.NVIDIA, 0, "NVIDIA GeForce RTX 3080", 10240, (8, 6))
GPU_B = Device(DeviceKind.NVIDIA, 1, "NVIDIA GeForce RTX 3080", 10240, (8, 6))
CPU = Device(DeviceKind.CPU, 0, "CPU", 8192, cores=4, is_cpu_like=True)


# --- SGF ------------------------------------------------------------------------------------

def test_setup_stones_outside_the_root_count() -> None:
    record = parse_sgf(b"(;GM[1]SZ[19];AB[pd][dp];W[dd])")
    assert record.initial_stones == [("B", "D4"), ("B", "Q16")]
    assert record.query()["initialPlayer"] == "W"


def test_move_in_the_root_node_counts() -> None:
    assert parse_sgf(b"(;SZ[9]B[ee];W[cc])").moves == [("B", "E5"), ("W", "C7")]


def test_player_to_move_without_moves() -> None:
    assert parse_sgf(b"(;SZ[19]AB[pd][dp]PL[W])").initial_player == "W"


@pytest.mark.parametrize("data,needle", [
    (b"(;SZ[19]KM[abc];B[aa])", "not a readable SGF"),
    (b"(;SZ[19]AB[zz])", "not a readable SGF"),
    (b"(;SZ[19];B[aa];AB[bb])", "after move 1"),
    (b"(;SZ[25];B[aa])", "larger than KataGo's 19"),
])
def test_bad_sgf_is_one_clear_error(data: bytes, needle: str) -> None:
    with pytest.raises(GameRecordError, match=needle):
        parse_sgf(data)


# --- configs --------------------------------------------------------------------------------

def request(devices: list[Device], backend: Backend, **kw: object) -> ConfigRequest:
    return ConfigRequest(mode=Mode.ANALYSIS, backend=backend, devices=devices,
                         preset=load_preset("server"), ram_mib=16384, **kw)  # type: ignore[arg-type]


def test_set_replaces_a_generated_key_instead_of_duplicating_it() -> None:
    s = generate_settings(request([GPU_A], Backend.CUDA, overrides={"cudaUseFP16": "false"}))
    keys = [k for k, _ in s.items()]
    assert keys.count("cudaUseFP16") == 1 and dict(s.items())["cudaUseFP16"] == "false"


def test_setting_for_the_other_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="numSearchThreads does not apply to analysis mode"):
        generate_settings(request([GPU_A], Backend.CUDA, overrides={"numSearchThreads": "8"}))


def test_identical_gpus_on_opencl_get_distinct_indices() -> None:
    opencl = [Device(DeviceKind.OPENCL, i, "NVIDIA GeForce RTX 3080") for i in (0, 1)]
    s = generate_settings(request([GPU_A, GPU_B], Backend.OPENCL, opencl_devices=opencl))
    items = dict(s.items())
    assert (items["openclDeviceToUseThread0"], items["openclDeviceToUseThread1"]) == ("0", "1")


def test_cuda_visible_devices_renumbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert (cuda_index(0), cuda_index(1)) == (1, 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(ConfigError, match="hidden by CUDA_VISIBLE_DEVICES"):
        cuda_index(0)


def test_eigen_engine_uses_the_cpu_even_beside_a_gpu(isolated_env: Path) -> None:
    info = EngineInfo(Path("/x/katago"), "1.18.1", Backend.EIGEN, None, "")
    report = DeviceReport(nvidia=[GPU_A], cpu=CPU, ram_mib=8192)
    built = build_config(mode=Mode.GTP, info=info, model=None, report=report)
    assert built.devices == [CPU]
    assert dict(built.settings.items())["numEigenThreadsPerModel"] == "4"
    with pytest.raises(ConfigError, match="Eigen"):
        build_config(mode=Mode.GTP, info=info, model=None, report=report, device_spec="gpu:0")


# --- installs -------------------------------------------------------------------------------

def test_zip_with_escaping_path_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escaped", "x")
    with pytest.raises(InstallError, match="unsafe path"):
        _extract_zip(archive, tmp_path / "dest")
    assert not (tmp_path / "escaped").exists()


def test_zip_keeps_executable_bits(tmp_path: Path) -> None:
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("dist/katago")
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        zf.writestr(info, "#!/bin/sh\n")
    _extract_zip(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "dist" / "katago").stat().st_mode & 0o111


def test_bad_download_url(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="bad download URL"):
        download("example.com/no-scheme.zip", tmp_path / "x.zip", Console(file=io.StringIO()))
    assert list(tmp_path.iterdir()) == []


# --- engine output faults (a scripted fake: a real KataGo does not print garbage) -------------

FAKE_GARBAGE_ENGINE = textwrap.dedent("""
    # FAKE ENGINE for fault injection: prints non-object JSON before a valid answer.
    import json, sys
    print("Started, ready to begin handling requests", file=sys.stderr, flush=True)
    for line in sys.stdin:
        q = json.loads(line)
        print("42"); print("[1, 2]"); print("not json", flush=True)
        print(json.dumps({"id": q["id"], "isDuringSearch": False, "turnNumber": 0}), flush=True)
        break
""")


def test_garbage_lines_do_not_kill_the_reader(tmp_path: Path) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_GARBAGE_ENGINE)

    async def go() -> None:
        engine = AnalysisEngine(Path(sys.executable), tmp_path / "unused.cfg", tmp_path / "m",
                                extra_args=())
        engine.process.argv = [sys.executable, str(script)]
        async with engine:
            [answer] = await engine.request({"id": "mine", "moves": []})
            assert answer["id"] == "mine"
            # Skipped and counted as the pool's members count them; not taken for answers.
            assert engine.garbage_lines == 3 and list(engine.garbage) == ["42", "[1, 2]", "not json"]
            assert not engine.orphans
            await engine.process.wait()  # the fake exits after one query
            with pytest.raises(EngineTerminatedError):
                await engine.request({"id": "late", "moves": []})

    asyncio.run(go())


FAKE_GARBAGE_KATAGO = Path(__file__).parent / "fakes" / "fake_garbage_katago"
GARBAGE_PER_ANSWER = 8  # the lines the fake writes before each of its answers


def test_pool_member_skips_garbage_lines(tmp_path: Path) -> None:
    """What the pool reads engines through (LocalMember): lines that are not JSON objects,
    and a line beyond the stream limit, are skipped and counted; the member stays up and
    the answer behind them comes through."""
    async def go() -> None:
        member = LocalMember("member-0", [sys.executable, str(FAKE_GARBAGE_KATAGO)],
                             stderr_log=tmp_path / "fake.stderr.log",
                             env={**os.environ, "FAKE_GARBAGE_HUGE_MB": str(STREAM_LIMIT_MB + 1)})
        await member.start()
        try:
            await member.send({"id": "mine", "moves": [["B", "Q16"]], "analyzeTurns": [0, 1]})
            answers = [await member.receive(), await member.receive()]
            assert [(a["id"], a["turnNumber"]) for a in answers if a] == [("mine", 0), ("mine", 1)]
            # The huge line may count as two: the reader drops what it holds at the limit,
            # then the rest of that line arrives and is skipped as a line of its own.
            skipped = member.garbage_lines
            assert GARBAGE_PER_ANSWER + 1 <= skipped <= GARBAGE_PER_ANSWER + 2
            # The latest few are kept (cut short) to show what the engine wrote.
            assert "stream limit" in member.garbage[0]
            assert list(member.garbage)[-3:] == ['"a string"', "null", ""]
            assert member.alive
            await member.send({"id": "v", "action": "query_version"})
            assert await member.receive() == {"id": "v", "action": "query_version",
                                              "version": "fake-garbage", "git_hash": "fake"}
            assert member.garbage_lines == skipped + GARBAGE_PER_ANSWER
        finally:
            await member.stop(grace=5)
        assert not member.alive
        left = []  # what it wrote before it went (its acknowledgement of katapool's stop)
        while (msg := await member.receive()) is not None:
            left.append(msg)
        assert [m["id"] for m in left] in ([], ["katapool-shutdown"])

    asyncio.run(go())


def test_pool_serves_through_an_engine_that_prints_garbage(tmp_path: Path) -> None:
    """The same engine behind a whole pool: every query answered once, no error reaches the
    caller, and the member is neither restarted nor reported unhealthy (garbage is not a
    crash)."""
    policy = PoolPolicy(responsive_interval=0.2, functional_interval=0.3)

    def fake_member(slot: int, generation: int) -> LocalMember:
        return LocalMember(f"member-{slot}", [sys.executable, str(FAKE_GARBAGE_KATAGO)],
                           stderr_log=tmp_path / f"member-{slot}.stderr.log")

    async def go() -> tuple[Collector, list[dict[str, object]], int]:
        c = Collector()
        async with Pool([fake_member, fake_member], policy, version="fake") as pool:
            await pool.supervisor.wait_until_all_settled()
            s = pool.session(c)
            for i in range(20):
                s.submit(json.dumps({"id": f"q{i}", "moves": [["B", "Q16"], ["W", "D4"]],
                                     "analyzeTurns": [0, 1, 2]}))
            s.submit('{"id": "v", "action": "query_version"}')
            await asyncio.wait_for(pool.drain(), 60)
            await asyncio.sleep(1)  # several health checks go through the garbage too
            garbage = sum(slot.member.garbage_lines for slot in pool.supervisor.slots
                          if isinstance(slot.member, LocalMember))
            return c, pool.status(), garbage

    c, status, garbage = asyncio.run(go())
    assert [m for m in c.messages if "error" in m] == []
    for i in range(20):
        assert sorted(m["turnNumber"] for m in c.finals(f"q{i}")) == [0, 1, 2]
    assert c.by_id["v"][0]["version"] == "fake"  # the pool's own answer
    assert [(s["state"], s["restarts"]) for s in status] == [("ready", 0), ("ready", 0)]
    assert garbage >= 20 * GARBAGE_PER_ANSWER  # the fake did print its garbage


# --- CLI error paths --------------------------------------------------------------------------

@pytest.mark.engine
def test_unwritable_output_is_one_line(kp: Katapool) -> None:
    proc = kp.run("config", "generate", "--mode", "gtp", "--model", str(G170),
                  "-o", "/proc/katapool/x.cfg")
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")


@pytest.mark.engine
def test_closed_pipe_is_not_a_traceback(kp: Katapool) -> None:
    proc = subprocess.run(
        f"{shlex.quote(sys.executable)} -m katapool review {shlex.quote(str(SHORT_SGF))} --visits 1 "
        f"--checks 0 --model {shlex.quote(str(G170))} --json | head -1",
        shell=True, capture_output=True, text=True, env=kp.env, timeout=300)
    assert len(proc.stdout.splitlines()) == 1 and '"move": 1' in proc.stdout
    assert "Traceback" not in proc.stderr


# --- mistyped command lines (the CLI sweep) ---------------------------------------------------
# Each case once ran on (a traceback, a silently ignored or accepted value, work done before an
# output that could never be written) or named the wrong problem. "/nonexistent" as --katago:
# the bad value must be caught before the engine is even looked for.

NO_ENGINE = ["--katago", "/nonexistent/katago"]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from katapool.cli.main import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _sweep_case(name: str, tmp: Path) -> tuple[list[str], str]:
    game, text = tmp / "game.sgf", tmp / "notes.txt"
    game.write_text("(;GM[1]FF[4]SZ[19]KM[6.5];B[pd];W[dp])")
    text.write_text("hello\n")
    not_katago, katago_cfg = tmp / "not-katago", tmp / "katago.cfg"
    not_katago.write_text("#!/bin/sh\necho hello\n")
    not_katago.chmod(0o755)
    katago_cfg.write_text("# a KataGo config given where a pool file goes\nmaxVisits = 5\n")
    cases: dict[str, tuple[list[str], str]] = {
        "analyze-members": (["analyze", str(game), "--members", "0", *NO_ENGINE],
                            "--members must be at least 1"),
        "analyze-top": (["analyze", str(game), "--top", "-1", *NO_ENGINE], "--top cannot be"),
        "analyze-out": (["analyze", str(game), "-o", str(text / "out"), *NO_ENGINE],
                        f"notes.txt/out: cannot make the output folder ({text} is a file)"),
        "validate-onnx": (["model", "validate", str(G170), str(text), "--sgf", str(game),
                           *NO_ENGINE], "notes.txt: not a readable ONNX file"),
        "install-backend": (["engine", "install", "--wheel", str(tmp / "none.whl"),
                             "--backend", "eigen"], "--backend: only with --from release"),
        "install-bad-backend": (["engine", "install", "--from", "release", "--version", "1.16.4",
                                 "--backend", "gpu"], "--backend gpu: unknown backend"),
        "prepare-batch": (["prepare", "--batch-size", "0", *NO_ENGINE],
                          "--batch-size: must be at least 1"),
        "gtp-timeout": (["gtp", "--command-timeout", "0", *NO_ENGINE],
                        "--command-timeout is seconds, more than 0"),
        "analysis-threads": (["analysis", "-analysis-threads", "-3", *NO_ENGINE],
                             "-analysis-threads must be at least 1"),
        "analysis-policy": (["analysis", "--policy", "no_such_key=1", *NO_ENGINE],
                            "bad --policy: unknown key 'no_such_key'"),
        "start-listen": (["start", "--listen", "ws://0.0.0.0:99999", "--state-dir",
                          str(tmp / "state")], "--listen: expected host:port"),
        "logs-lines": (["logs", "-n", "-3", "--state-dir", str(tmp / "state")],
                       "--lines cannot be negative"),
        "export-under-a-file": (["model", "export-onnx", str(G170), "-o", str(text / "x.onnx")],
                                f"{text} is a file, where a folder is needed"),
        "not-katago": (["engine", "info", "--katago", str(not_katago)],
                       "not-katago is not KataGo: `not-katago version` printed no KataGo version "
                       "(it printed: hello)"),
        "start-katago-config": (["start", "-config", str(katago_cfg), "--state-dir",
                                 str(tmp / "state")], "this looks like a KataGo config"),
        "ray-port": (["ray", "head", "--port", "-1"], "--port: '-1' is not a port (1 to 65535)"),
        "ray-address": (["ray", "worker", "--address", "head-machine", "--no-prepare"],
                        "--address: 'head-machine': expected the head's HOST:PORT"),
        "install-wheel": (["engine", "install", "--wheel", str(text)],
                          "--wheel " + str(text) + " is not the KaTrain wheel katapool pins"),
        "analyze-connect": (["analyze", str(game), "--connect", "http://127.0.0.1:8123"],
                            "'http://127.0.0.1:8123' is not a daemon address"),
        "bench-chart-folder": (["bench", "--model", str(G170), "--chart", str(tmp),
                                "--skip", "engine,onnx,tflite"],
                               f"--chart {tmp} is a folder: give a file"),
        "bench-chart-under-a-file": (["bench", "--model", str(G170), "--chart",
                                      str(text / "chart.png"), "--skip", "engine,onnx,tflite"],
                                     f"cannot make its folder ({text} is a file)"),
        "analysis-config-folder": (["analysis", "-config", str(tmp), *NO_ENGINE],
                                   f"-config {tmp} is a folder"),
        # A path the user names is checked even where the command could do without it.
        "devices-katago": (["devices", *NO_ENGINE], "--katago /nonexistent/katago: no such file"),
        "devices-not-katago": (["devices", "--katago", str(not_katago)],
                               "not-katago is not KataGo"),
        "devices-model": (["devices", "--model", str(tmp / "none.bin.gz")],
                          f"model not found: {tmp / 'none.bin.gz'}"),
        "devices-not-a-network": (["devices", "--model", str(text)],
                                  f"{text} is not a KataGo network: expected the model version"),
        "export-katago-unused": (["model", "export-onnx", str(G170), "-o", str(tmp / "x.onnx"),
                                  *NO_ENGINE], "--katago /nonexistent/katago: no such file"),
        "tflite-katago-unused": (["model", "export-tflite", str(G170), "-o",
                                  str(tmp / "x.tflite"), "--no-check", *NO_ENGINE],
                                 "--katago /nonexistent/katago: no such file"),
    }
    return cases[name]


SWEEP = ["analyze-members", "analyze-top", "analyze-out", "validate-onnx", "install-backend",
         "install-bad-backend", "prepare-batch", "gtp-timeout", "analysis-threads",
         "analysis-policy", "start-listen", "logs-lines", "export-under-a-file", "not-katago",
         "start-katago-config", "ray-port", "ray-address", "install-wheel",
         "analyze-connect", "bench-chart-folder", "bench-chart-under-a-file",
         "analysis-config-folder", "devices-katago", "devices-not-katago", "devices-model",
         "devices-not-a-network", "export-katago-unused", "tflite-katago-unused"]


@pytest.mark.parametrize("case", SWEEP)
def test_mistyped_command_line_is_one_specific_line(case: str, isolated_env: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (isolated_env / "state" / "logs").mkdir(parents=True)
    (isolated_env / "state" / "logs" / "daemon.log").write_text("one\ntwo\nthree\nfour\n")
    if case == "install-wheel" and platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("KaTrain's wheel is x86-64 only: the install stops before the wheel")
    argv, needle = _sweep_case(case, isolated_env)
    code, out, err = _cli(argv, capsys)
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert needle in lines[-1] and lines[-1].startswith(("error: ", "katapool ")), err
    assert "Traceback" not in err and "pydantic.dev" not in err


def test_a_folder_given_as_the_model_is_named_a_folder(tmp_path: Path) -> None:
    from katapool.engine.discovery import resolve_model
    from katapool.errors import ModelError

    with pytest.raises(ModelError, match="is a folder: give the network file in it"):
        resolve_model(tmp_path)


def test_only_networks_the_user_names_are_checked(tmp_path: Path, isolated_env: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """-model and $KATAPOOL_MODEL must name a network; an installed engine's bundled one is
    trusted as recorded (tests record stand-ins)."""
    from katapool.engine.discovery import ResolvedEngine, resolve_model
    from katapool.engine.manifest import EngineRecord
    from katapool.errors import ModelError

    notes = tmp_path / "notes.txt"
    notes.write_text("meeting notes\n")
    with pytest.raises(ModelError, match=r"notes.txt is not a KataGo network: expected the model"):
        resolve_model(notes)
    assert resolve_model(G170) == G170
    monkeypatch.setenv("KATAPOOL_MODEL", str(notes))
    with pytest.raises(ModelError, match="notes.txt is not a KataGo network"):
        resolve_model()
    monkeypatch.delenv("KATAPOOL_MODEL")
    stand_in = tmp_path / "net.bin.gz"
    stand_in.write_bytes(b"x")
    record = EngineRecord(name="e", version="1.18.1", backend=Backend.EIGEN,
                          path=tmp_path / "katago", sha256="0", source="path", managed=False,
                          model=stand_in)
    assert resolve_model(None, ResolvedEngine(record.path, "manifest", record)) == stand_in


@pytest.mark.engine
def test_a_named_file_that_is_no_network_is_refused_before_any_config(kp: Katapool,
                                                                      tmp_path: Path) -> None:
    notes, noise = tmp_path / "notes.txt", tmp_path / "noise.bin.gz"
    notes.write_text("meeting notes\n")
    noise.write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "gtp.cfg"
    for model, why in ((notes, "expected the model version"), (noise, "not gzip-compressed")):
        proc = kp.run("config", "generate", "--mode", "gtp", "-model", str(model), "-o", str(out))
        assert proc.returncode != 0 and not out.exists()
        assert f"error: {model} is not a KataGo network: " in proc.stderr and why in proc.stderr
    # engine info's device check no longer passes over a network named wrong.
    info = kp.run("engine", "info", "--model", str(tmp_path / "none.bin.gz"))
    assert info.returncode != 0 and f"model not found: {tmp_path / 'none.bin.gz'}" in info.stderr


@pytest.mark.engine
def test_analysis_threads_flag_works_with_generated_configs(kp: Katapool) -> None:
    """KaTrain launches `katago analysis ... -analysis-threads N`; with a generated config
    (which sets numAnalysisThreads) KataGo refused that flag and no member ever started."""
    query = json.dumps({"id": "q", "moves": [], "rules": "japanese", "komi": 6.5,
                        "boardXSize": 19, "boardYSize": 19, "maxVisits": 2})
    proc = subprocess.run([sys.executable, "-m", "katapool", "analysis", "-model", str(G170),
                           "-analysis-threads", "2"], input=query + "\n", capture_output=True,
                          text=True, env=kp.env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["id"] for a in answers] == ["q"] and "moveInfos" in answers[0]


@pytest.mark.engine
@pytest.mark.parametrize("command", ["analysis", "gtp"])
def test_stdin_from_dev_null_is_end_of_input(kp: Katapool, command: str) -> None:
    """`katapool analysis < /dev/null`: epoll refuses /dev/null, which asyncio found out only
    in a callback: a traceback, and an end of input that never came (a hang)."""
    with open(os.devnull, "rb") as devnull:
        proc = subprocess.run([sys.executable, "-m", "katapool", command, "-model", str(G170)],
                              stdin=devnull, capture_output=True, text=True, env=kp.env,
                              timeout=120)  # a hang guard: it takes seconds
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert "Traceback" not in proc.stderr
