"""`katapool analysis` as a drop-in for `katago analysis`, driven the way KaTrain drives it."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from conftest import CACHE, G170, TRANSFORMER, Katapool
from katapool.engine.process import STREAM_LIMIT
from processes import engines_under

pytestmark = pytest.mark.engine

WHEEL = CACHE / "test-downloads" / "downloads" / "katrain-1.20.0-py3-none-any.whl"
MOVES = [["B", "Q16"], ["W", "D4"], ["B", "Q4"], ["W", "D16"], ["B", "R10"]]


def katrain_query(n: int, turn: int) -> dict[str, Any]:
    """Shaped like KaTrain's engine wrapper's requests."""
    return {"id": f"QUERY:{n}", "rules": "japanese", "priority": n % 3, "analyzeTurns": [turn],
            "maxVisits": 8, "komi": 6.5, "boardXSize": 19, "boardYSize": 19,
            "includeOwnership": True, "includeMovesOwnership": False, "includePolicy": True,
            "initialStones": [], "initialPlayer": "B", "moves": MOVES[:turn],
            "overrideSettings": {"reportAnalysisWinratesAs": "BLACK", "wideRootNoise": 0.0}}


def shape(value: Any) -> Any:
    """The structure of a response without its numbers: keys, list lengths, element shapes."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        if value and isinstance(value[0], (int, float)):
            return f"list[{len(value)}] of numbers"
        return [shape(value[0])] if value else []
    return type(value).__name__


@pytest.fixture(scope="module")
def katrain_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """KaTrain's own analysis config, from the KaTrain wheel the engine came from."""
    path = tmp_path_factory.mktemp("katrain") / "analysis_config.cfg"
    with zipfile.ZipFile(WHEEL) as zf:
        path.write_bytes(zf.read("katrain/KataGo/analysis_config.cfg"))
    return path


def run_lines(argv: list[str], lines: list[str], env: dict[str, str], timeout: float = 300,
              started: list[int] | None = None) -> tuple[list[dict[str, Any]], str]:
    """``started`` gets the process's pid (katapool names its member logs after it)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    if started is not None:
        started.append(proc.pid)
    try:
        stdout, stderr = proc.communicate("".join(ln + "\n" for ln in lines), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-2000:]
    out = [json.loads(ln) for ln in stdout.splitlines()]  # stdout is protocol only
    return out, stderr


def member_logs(kp: Katapool) -> set[Path]:
    return set((kp.data_dir / "logs" / "pool").glob("*-member-*.stderr.log"))


def test_drop_in_for_katrain(kp: Katapool, katago: Path, katrain_config: Path,
                             tmp_path: Path) -> None:
    queries = [json.dumps(katrain_query(n, turn)) for n, turn in enumerate([0, 2, 5, 3, 5, 1])]
    home = tmp_path / "katrain-home"
    logs_before = member_logs(kp)
    # KaTrain's exact launch: <exe> analysis -model M -config C -override-config homeDataDir=...
    started: list[int] = []
    ours, stderr = run_lines(
        [sys.executable, "-m", "katapool", "analysis", "-model", str(G170), "-config",
         str(katrain_config), "-override-config", f"homeDataDir={home}"],
        queries, kp.env, started=started)
    assert "Started, ready to begin handling requests" in stderr

    # katapool must not re-tune OpenCL in the app's private homeDataDir: the engine loaded
    # katapool's prepared tuning, and nothing was tuned into (or written under) that home.
    tuning = next((kp.data_dir / "tuning").glob("reference-*.txt"))
    # Its own member's log (pools of tests running beside it log into the same folder).
    [log] = [p for p in member_logs(kp) - logs_before if p.name.startswith(f"{started[0]}-")]
    engine_said = log.read_text()
    loaded = re.findall(r"Loaded tuning parameters from: (.+?)\s*$", engine_said, re.M)
    assert [Path(f).resolve() for f in loaded] == [tuning.resolve()], engine_said[-2000:]
    assert "Performing autotuning" not in engine_said
    assert not [p for p in home.rglob("*") if p.is_file()], list(home.rglob("*"))

    theirs, _ = run_lines(
        [str(katago), "analysis", "-model", str(G170), "-config", str(katrain_config),
         "-override-config", f"homeDataDir={tmp_path / 'plain-home'}",
         "-override-config", f"openclTunerFile={tuning}"],
        queries, kp.env)

    assert sorted(r["id"] for r in ours) == sorted(r["id"] for r in theirs)
    by_id = {r["id"]: r for r in theirs}
    for mine in ours:
        assert shape(mine) == shape(by_id[mine["id"]]), mine["id"]
        assert mine["turnNumber"] == by_id[mine["id"]]["turnNumber"]
        assert len(mine["ownership"]) == 361 and len(mine["policy"]) == 362


def test_end_of_input_drains_outstanding_work(kp: Katapool) -> None:
    lines = [json.dumps({**katrain_query(n, 5), "analyzeTurns": [0, 1, 2, 3, 4, 5]})
             for n in range(4)]
    out, _ = run_lines([sys.executable, "-m", "katapool", "analysis", "-model", str(G170),
                        "--members", "2"], lines, kp.env)
    finals = [(r["id"], r["turnNumber"]) for r in out if r.get("isDuringSearch") is False]
    assert sorted(finals) == sorted((f"QUERY:{n}", t) for n in range(4) for t in range(6))


def test_quit_without_waiting(kp: Katapool) -> None:
    # A million visits would take hours here: returning at all (the timeout is a hang guard)
    # means katapool quit at the end of input without waiting for the search.
    long = {**katrain_query(0, 5), "maxVisits": 1_000_000}
    out, _ = run_lines([sys.executable, "-m", "katapool", "analysis", "-model", str(G170),
                        "-quit-without-waiting"], [json.dumps(long)], kp.env, timeout=300)
    assert all(r.get("id") == "QUERY:0" for r in out)
    assert not any(r.get("rootInfo", {}).get("visits", 0) >= 1_000_000 for r in out)


def test_human_model_reaches_the_engine(kp: Katapool) -> None:
    """`-human-model M` is passed to each member's KataGo, which loads M as its second
    network. No human-SL network exists among the test networks, so another network stands
    in: KataGo loads any network as the human model, lists it in query_models and names it
    when a humanSLProfile is asked of networks that cannot use one."""
    lines = [json.dumps({"id": "m", "action": "query_models"}),
             json.dumps({**katrain_query(0, 1), "id": "h",
                         "overrideSettings": {"humanSLProfile": "rank_5k"}})]
    out, _ = run_lines([sys.executable, "-m", "katapool", "analysis", "-model", str(G170),
                        "-human-model", str(TRANSFORMER)], lines, kp.env)
    by_id = {r["id"]: r for r in out}
    names = [Path(m["name"]).resolve() for m in by_id["m"]["models"]]
    assert names == [G170.resolve(), TRANSFORMER.resolve()], by_id["m"]
    assert by_id["h"]["field"] == "overrideSettings"
    assert "humanSLProfile" in by_id["h"]["error"] and TRANSFORMER.name in by_id["h"]["error"]

    # Without it, the engine has one network.
    out, _ = run_lines([sys.executable, "-m", "katapool", "analysis", "-model", str(G170)],
                       lines[:1], kp.env)
    assert [Path(m["name"]).resolve() for m in out[0]["models"]] == [G170.resolve()]


def test_bad_lines_get_katago_errors_on_stdout(kp: Katapool) -> None:
    lines = ["{oops", json.dumps({"id": "a", "action": "nope"}),
             json.dumps({"id": "b", "moves": [["B", "Q16"]], "analyzeTurns": [7]}),
             json.dumps(katrain_query(1, 1))]
    out, _ = run_lines([sys.executable, "-m", "katapool", "analysis", "-model", str(G170)],
                       lines, kp.env)
    assert "could not parse input line as json" in out[0]["error"]
    errors = {r.get("id"): r for r in out if "error" in r}
    assert errors["a"]["field"] == "action"
    assert errors["b"]["field"] == "analyzeTurns"
    assert any(r.get("id") == "QUERY:1" and r.get("isDuringSearch") is False for r in out)


def test_lines_katago_answers_are_answered(kp: Katapool) -> None:
    """What KataGo takes: a byte-order mark, turns written as JSON floats (it cuts them to
    integers) and a query whose `action` is not a string. A line past katapool's input limit
    (KataGo has none) gets one error for the whole line; its tail is not a line of its own."""
    # Past twice the limit: the reader has stopped filling its buffer before the line's end.
    huge = json.dumps({"id": "huge", "moves": [], "pad": "x" * (2 * STREAM_LIMIT + (1 << 20))})
    # The first line after a byte-order mark, as .NET's UTF-8 writers send it.
    lines = ["\ufeff" + json.dumps({**katrain_query(1, 2), "analyzeTurns": [1.0, 2]}), huge,
             json.dumps({**katrain_query(2, 0), "action": 5})]
    out, _ = run_lines([sys.executable, "-m", "katapool", "analysis", "-model", str(G170)],
                       lines, kp.env)
    errors = [r for r in out if "error" in r]
    assert len(errors) == 1 and "id" not in errors[0], errors
    assert "could not parse input line as json request" in errors[0]["error"]
    finals = sorted((r["id"], r["turnNumber"]) for r in out if r.get("isDuringSearch") is False)
    assert finals == [("QUERY:1", 1), ("QUERY:1", 2), ("QUERY:2", 0)], out


@pytest.mark.parametrize("args,needle", [
    (["--gpus", "zero"], "--gpus"),
    (["-config", "/nonexistent.cfg"], "-config /nonexistent.cfg: no such file"),
    (["-model", "/nonexistent.bin.gz"], "model not found"),
    (["--policy", "crash_budget=-1"], "crash_budget"),
])
def test_bad_arguments_are_one_line(kp: Katapool, args: list[str], needle: str) -> None:
    extra = [] if "-model" in args else ["-model", str(G170)]
    proc = kp.run("analysis", *extra, *args)
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_no_member_can_start(kp: Katapool, tmp_path: Path) -> None:
    bad = tmp_path / "bad.cfg"
    bad.write_text("numAnalysisThreads = 1\nnumSearchThreadsPerAnalysisThread = 1\n"
                   "nnMaxBatchSize = many\n")
    proc = kp.run("analysis", "-model", str(G170), "-config", str(bad))
    assert proc.returncode != 0 and proc.stdout == ""
    assert "no pool member could start" in proc.stderr and "nnMaxBatchSize" in proc.stderr


def _start(kp: Katapool, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "katapool", "analysis", "-model", str(G170),
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=kp.env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "ready to begin handling requests" in line:
            return proc
    raise AssertionError(f"katapool analysis did not start: {proc.wait()}")


def _engines_of(pid: int) -> list[int]:
    return [p.pid for p in engines_under(pid)]


def _gone(pids: list[int], within: float) -> bool:
    import psutil
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_sigterm_stops_cleanly(kp: Katapool) -> None:
    proc = _start(kp, "--members", "2")
    engines = _engines_of(proc.pid)
    assert len(engines) == 2
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({**katrain_query(0, 5), "maxVisits": 1_000_000}) + "\n")
    proc.stdin.flush()
    time.sleep(1)
    proc.terminate()
    assert proc.wait(30) == 0
    assert _gone(engines, 10), "engines outlived katapool"


def test_engines_die_with_a_sigkilled_katapool(kp: Katapool) -> None:
    proc = _start(kp, "--members", "2")
    engines = _engines_of(proc.pid)
    assert len(engines) == 2
    proc.kill()
    proc.wait(10)
    assert _gone(engines, 10), "engines outlived a SIGKILLed katapool"


class KaTrainLikeClient:
    """Talks the way KaTrain's engine wrapper does: one process, a stdout reader thread, a
    stderr reader thread that treats `what()` / `Uncaught exception` as engine failure, and
    queries written as they come, with stdin left open."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        import threading
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.responses: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        assert self.ready.wait(120), "never ready"

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.responses.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "ready to begin handling requests" in line:
                self.ready.set()

    def send(self, query: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(query) + "\n")
        self.proc.stdin.flush()

    def finals(self, qid: str) -> list[dict[str, Any]]:
        return [r for r in self.responses if r.get("id") == qid and r.get("isDuringSearch") is False]

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    @property
    def engine_failed(self) -> bool:
        return any("what()" in ln or "Uncaught exception" in ln for ln in self.stderr)


def test_katrain_session_survives_a_member_crash(kp: Katapool, katrain_config: Path,
                                                 tmp_path: Path) -> None:
    client = KaTrainLikeClient(
        [sys.executable, "-m", "katapool", "analysis", "-model", str(G170), "-config",
         str(katrain_config), "-override-config", f"homeDataDir={tmp_path / 'home'}",
         "--members", "2"], kp.env)
    for n in range(6):
        client.send(katrain_query(n, n % 6))
    client.wait(lambda: all(client.finals(f"QUERY:{n}") for n in range(6)), 120, "first answers")

    ponder = {**katrain_query(100, 5), "maxVisits": 10_000_000, "reportDuringSearchEvery": 0.3}
    client.send(ponder)
    client.wait(lambda: sum(r.get("id") == "QUERY:100" for r in client.responses) >= 2, 60,
                "pondering results")
    [victim, *_] = _engines_of(client.proc.pid)
    os.kill(victim, signal.SIGKILL)
    for n in range(6, 10):
        client.send(katrain_query(n, n % 6))
    client.wait(lambda: all(client.finals(f"QUERY:{n}") for n in range(6, 10)), 120,
                "answers after the crash")
    client.send({"id": "QUERY:101", "action": "terminate", "terminateId": "QUERY:100"})
    client.wait(lambda: client.finals("QUERY:100"), 60, "the ponder's final result")
    assert client.proc.stdin is not None
    client.proc.stdin.close()
    assert client.proc.wait(60) == 0
    for n in list(range(10)) + [100]:
        assert len(client.finals(f"QUERY:{n}")) == 1, n
    assert not client.engine_failed, "".join(client.stderr)
    assert any("lost" in ln for ln in client.stderr), "the crash is logged, in neutral words"


def test_report_fields_as_katago_reads_them(kp: Katapool) -> None:
    """firstReportDuringSearchAfter alone asks for one partial result per turn; a report
    interval KataGo refuses gets its error (katapool's own heartbeats must not hide it)."""
    client = KaTrainLikeClient([sys.executable, "-m", "katapool", "analysis", "-model", str(G170),
                                "--policy", "heartbeat_every=0.3"], kp.env)
    client.send({**katrain_query(0, 1), "id": "bad", "reportDuringSearchEvery": 0})
    client.send({**katrain_query(1, 5), "id": "first", "maxVisits": 1_000_000,
                 "firstReportDuringSearchAfter": 0.2})

    def of(qid: str) -> list[dict[str, Any]]:
        return [r for r in client.responses if r.get("id") == qid]

    client.wait(lambda: of("bad"), 60, "an answer to the bad interval")
    client.wait(lambda: of("first"), 60, "the first report")
    time.sleep(1.5)  # heartbeats come every 0.3 s: none may reach the caller
    client.send({"id": "stop", "action": "terminate", "terminateId": "first"})
    client.wait(lambda: client.finals("first"), 60, "the final result")
    assert client.proc.stdin is not None
    client.proc.stdin.close()
    assert client.proc.wait(60) == 0
    [bad] = of("bad")
    assert bad["field"] == "reportDuringSearchEvery" and "error" in bad, bad
    assert [r["isDuringSearch"] for r in of("first")] == [True, False]


def _quieted(name: str) -> tuple[logging.Logger, io.StringIO]:
    """A logger whose output goes through the filter `katapool analysis` puts on stderr."""
    from katapool.cli.analysis_cmd import _QuietForGuis

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_QuietForGuis())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    return logger, stream


def test_stderr_never_says_what_katrain_takes_for_a_crash() -> None:
    logger, stream = _quieted("katapool.test.quiet")
    logger.warning("%s lost: %s", "member-0",
                   "engine failed: what():  CUDA error; Uncaught exception in thread")
    text = stream.getvalue()
    assert "what()" not in text and "Uncaught exception" not in text
    assert "member-0 lost: engine failed: engine said:  CUDA error" in text


def test_quieted_diagnosis_says_engine_said_once() -> None:
    logger, stream = _quieted("katapool.test.quiet-once")
    logger.error("member-0 failed for good: %s", "the network file could not be loaded "
                 "(engine said: what():  Error loading or parsing model file x.txt)")
    text = stream.getvalue()
    assert "what()" not in text and text.count("engine said") == 1, text
