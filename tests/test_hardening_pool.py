"""Never freeze, never hang silently: queued queries that expire, failover that does not wait
for a stuck member's kill, katapool's own faults told apart from engine deaths, and the
client's default timeout.

Real engines wherever a real engine can show the fault. FAULT INJECTION, named as such: a
member whose kill or clean stop blocks (a process stuck in the kernel, which no test can
cause on demand), a member whose reader or writer raises (a katapool bug), and a FAKE member
that never becomes ready (an engine start that never ends, in a test that must not wait
minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pool_helpers import Collector, make_pool, member_pids, wait_for

from conftest import ROOT, Katapool
from katapool.client import AsyncClient, Client, Position, QueryError
from katapool.client.async_client import ANALYZE_TIMEOUT
from katapool.client.transport import EmbeddedChannel
from katapool.pool import Pool, PoolPolicy
from katapool.pool.member import LocalMember, Member
from katapool.pool.supervisor import MemberFactory

OPENING = [["B", "Q16"], ["W", "D4"], ["B", "Q4"], ["W", "D16"], ["B", "C3"]]


def query(qid: str, visits: int = 8, **extra: object) -> str:
    return json.dumps({"id": qid, "moves": OPENING, "rules": "chinese", "komi": 7.5,
                       "boardXSize": 19, "boardYSize": 19, "maxVisits": visits, **extra})


class NeverReadyMember:
    """FAKE: a member whose start never ends (a TensorRT build, a hung driver)."""

    name = "never-ready"
    alive = False

    async def start(self) -> None:
        await asyncio.Event().wait()

    async def send(self, message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent to a member that never started")

    async def receive(self) -> dict[str, Any] | None:
        return None

    async def stop(self, grace: float) -> None:
        pass

    async def kill(self) -> None:
        pass

    def describe_failure(self) -> str:
        return "never started"


# --- queued queries expire ----------------------------------------------------------------------

def test_a_queued_query_gets_a_katago_style_error_instead_of_waiting_for_ever() -> None:
    """No member ever becomes ready: a plain query ends after queue_timeout, a query with a
    time limit at its deadline, query_models too; each with KataGo's error shape, and the
    client's analyze (no timeout given) raises instead of hanging."""
    async def go() -> tuple[Collector, Collector, BaseException]:
        queued, timed = Collector(), Collector()
        pool = Pool([lambda i, g: NeverReadyMember()], PoolPolicy(queue_timeout=0.5))
        await pool.start(wait="none")
        s = pool.session(queued)
        s.submit(query("plain"))
        s.submit('{"id":"models","action":"query_models"}')
        # A guard far above the 0.5 s limit: the old code never answered at all.
        await asyncio.wait_for(pool.drain(), 30)
        client = AsyncClient(EmbeddedChannel(pool, own=False))
        await client.open()
        try:
            await asyncio.wait_for(client.analyze(Position.from_moves(["Q16"]), visits=4), 30)
        except QueryError as exc:
            failure: BaseException = exc
        else:
            raise AssertionError("analyze returned a result from a pool with no member")
        await client.close()
        await pool.close()

        deadline_pool = Pool([lambda i, g: NeverReadyMember()],
                             PoolPolicy(queue_timeout=None, deadline_grace=0.3))
        await deadline_pool.start(wait="none")
        s2 = deadline_pool.session(timed)
        s2.submit(query("limited", overrideSettings={"maxTime": 0.2}))
        await asyncio.wait_for(deadline_pool.drain(), 30)
        await deadline_pool.close()
        return queued, timed, failure

    queued, timed, failure = asyncio.run(go())
    for qid in ("plain", "models"):
        [msg] = queued.by_id[qid]
        assert set(msg) == {"id", "error"}, msg
        assert "no engine member could take it within 0.5 s" in msg["error"]
        assert "member-0 starting" in msg["error"]
    [msg] = timed.by_id["limited"]
    assert set(msg) == {"id", "error"} and "deadline passed" in msg["error"], msg
    assert "no engine member could take it" in str(failure)


def test_client_analyze_has_a_documented_default_timeout() -> None:
    for analyze in (AsyncClient.analyze, Client.analyze):
        assert inspect.signature(analyze).parameters["timeout"].default == ANALYZE_TIMEOUT
    assert 60 <= ANALYZE_TIMEOUT <= 3600
    assert f"default **{ANALYZE_TIMEOUT:g}**" in (ROOT / "docs" / "client.md").read_text()


# --- real engines -------------------------------------------------------------------------------

@pytest.fixture
def pool_env(kp: Katapool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KATAPOOL_DATA_DIR", str(kp.data_dir))
    monkeypatch.delenv("KATAPOOL_KATAGO", raising=False)
    yield kp.data_dir


def _hooked(factories: list[MemberFactory], hook: Any) -> list[MemberFactory]:
    def wrap(factory: MemberFactory) -> MemberFactory:
        def make(slot: int, generation: int) -> Member:
            member = factory(slot, generation)
            hook(member, slot, generation)
            return member
        return make
    return [wrap(f) for f in factories]


def _hooked_pool(tmp_path: Path, members: int, policy: PoolPolicy, hook: Any) -> Pool:
    """A real-engine pool whose every new member is first handed to ``hook``."""
    base = make_pool(tmp_path, members=members, policy=policy)
    return Pool(_hooked(base.factories(), hook), policy, version=base.version)


@pytest.mark.engine
def test_a_stopped_member_s_queries_are_answered_before_its_kill_returns(
        pool_env: Path, tmp_path: Path) -> None:
    """Member 0 is SIGSTOPped with queries on it, and its kill blocks (FAULT INJECTION: a
    process stuck in the kernel): its queries are answered by member 1 while the kill is
    still pending. The old supervisor awaited the kill first and held them."""
    release = asyncio.Event()
    kill_entered = asyncio.Event()

    def hook(member: Member, slot: int, generation: int) -> None:
        if slot == 0 and generation == 1:
            real_kill = member.kill

            async def stuck_kill() -> None:
                kill_entered.set()
                await asyncio.wait_for(release.wait(), 300)
                await real_kill()
            member.kill = stuck_kill  # type: ignore[method-assign]

    policy = PoolPolicy(responsive_interval=0.3, responsive_deadline=1.0,
                        functional_interval=3600, backoff_initial=0.1)

    async def go() -> tuple[Collector, bool]:
        c = Collector()
        pool = _hooked_pool(tmp_path, 2, policy, hook)
        async with pool:
            await pool.supervisor.wait_until_all_settled()
            victim = member_pids(pool)[0]
            os.kill(victim, signal.SIGSTOP)
            s = pool.session(c)
            for i in range(6):
                s.submit(query(f"q{i}"))
            try:
                await asyncio.wait_for(pool.drain(), 90)
                answered_during_kill = kill_entered.is_set() and not release.is_set()
            finally:
                release.set()
            await wait_for(lambda: pool.supervisor.slots[0].ready, 90, "member 0 replaced")
        return c, answered_during_kill

    c, answered_during_kill = asyncio.run(go())
    for i in range(6):
        assert len(c.finals(f"q{i}")) == 1, c.by_id[f"q{i}"]
    assert answered_during_kill


@pytest.mark.engine
def test_a_reload_moves_queries_before_the_old_member_has_stopped(
        pool_env: Path, tmp_path: Path) -> None:
    """A planned replacement whose clean stop blocks (FAULT INJECTION): the queries it still
    held are answered by the other member meanwhile."""
    release = asyncio.Event()
    stop_entered = asyncio.Event()

    def hook(member: Member, slot: int, generation: int) -> None:
        if slot == 0 and generation == 1:
            real_stop = member.stop

            async def stuck_stop(grace: float) -> None:
                stop_entered.set()
                await asyncio.wait_for(release.wait(), 300)
                await real_stop(grace)
            member.stop = stuck_stop  # type: ignore[method-assign]

    policy = PoolPolicy(functional_interval=3600)

    async def go() -> tuple[Collector, bool, bool, int]:
        c = Collector()
        base = make_pool(tmp_path, members=2, policy=policy)
        factories = base.factories()
        pool = Pool(_hooked(factories, hook), policy, version=base.version)
        async with pool:
            await pool.supervisor.wait_until_all_settled()
            s = pool.session(c)
            for i in range(4):
                s.submit(query(f"q{i}", visits=40))
            await wait_for(lambda: pool.members()[0].in_flight > 0, 30,
                           "work on member 0")
            reload = asyncio.create_task(pool.reload(factories, drain_timeout=0))
            try:
                await asyncio.wait_for(pool.drain(), 180)
                answered_during_stop = stop_entered.is_set() and not release.is_set()
            finally:
                release.set()
            ok = await asyncio.wait_for(reload, 120)
            moved = pool.router.stats["rerouted"]
        return c, answered_during_stop, ok, moved

    c, answered_during_stop, ok, moved = asyncio.run(go())
    for i in range(4):
        assert len(c.finals(f"q{i}")) == 1, c.by_id[f"q{i}"]
    assert moved >= 1, "member 0 held no query when its stop began: nothing was moved"
    assert answered_during_stop and ok


@pytest.mark.engine
@pytest.mark.parametrize("where", ["reader", "writer"])
def test_a_fault_in_katapool_s_own_reader_or_writer_is_not_an_engine_death(
        pool_env: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str) -> None:
    """FAULT INJECTION: the member's receive (or send) raises once, as a katapool bug would.
    Logged with its traceback as katapool's fault; no crash budget spent, no "died: <engine
    stderr>"; the query in flight is answered and the pool keeps serving."""
    armed = {"on": False}

    def hook(member: Member, slot: int, generation: int) -> None:
        if generation != 1:
            return
        assert isinstance(member, LocalMember)
        if where == "reader":
            real_receive = member.receive

            async def receive() -> dict[str, Any] | None:
                msg = await real_receive()
                if armed["on"]:
                    armed["on"] = False
                    raise RuntimeError("injected reader bug")
                return msg
            member.receive = receive  # type: ignore[method-assign]
        else:
            member.send_nowait = None  # type: ignore[assignment,method-assign]
            real_send = member.send

            async def send(message: dict[str, Any]) -> None:
                if armed["on"] and message.get("id", "").startswith("kp"):
                    armed["on"] = False
                    raise TypeError("injected writer bug")
                await real_send(message)
            member.send = send  # type: ignore[method-assign]

    policy = PoolPolicy(functional_interval=3600, backoff_initial=0.1)

    async def go() -> tuple[Collector, Any]:
        c = Collector()
        pool = _hooked_pool(tmp_path, 1, policy, hook)
        async with pool:
            slot = pool.supervisor.slots[0]
            armed["on"] = True
            s = pool.session(c)
            s.submit(query("q0"))
            await asyncio.wait_for(pool.drain(), 120)
            s.submit(query("q1"))
            await asyncio.wait_for(pool.drain(), 120)
            return c, (list(slot.deaths), slot.last_cause, slot.restarts, slot.state.value)

    with caplog.at_level(logging.ERROR, logger="katapool.pool.supervisor"):
        c, (deaths, cause, restarts, state) = asyncio.run(go())
    assert len(c.finals("q0")) == 1 and len(c.finals("q1")) == 1, c.messages
    assert deaths == [], "a katapool bug spent the engine's crash budget"
    assert cause is not None and cause.startswith(f"katapool internal error in the {where}")
    assert "died" not in cause
    assert restarts == 1 and state == "ready"
    [record] = [r for r in caplog.records if "katapool's own fault" in r.getMessage()]
    assert record.exc_info is not None and "injected" in str(record.exc_info[1])


# --- nothing else blocks the event loop ----------------------------------------------------------

def test_gtp_notes_to_a_full_non_blocking_stderr_wait_without_blocking_or_splitting() -> None:
    """Lizzie merges stderr into a pipe asyncio made non-blocking: with that pipe full, a
    note must neither stall the loop (the old code slept up to 5 s, then dropped the line)
    nor be lost or split once the GUI reads again."""
    from katapool.cli.gtp_cmd import StderrLines

    async def go() -> tuple[bytes, int]:
        r, w = os.pipe()
        os.set_blocking(w, False)
        os.set_blocking(r, False)
        filler = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                filler += os.write(w, b"=" * 4096)
        notes = StderrLines(w)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        for i in range(50):
            notes.write(f"note {i} " + "x" * 300 + "\n")  # returns at once: the pipe is full
        await asyncio.sleep(0.1)
        ticks_while_full = ticks
        got = bytearray()
        for _ in range(3000):  # the GUI reads again
            with contextlib.suppress(BlockingIOError):
                got += os.read(r, 1 << 16)
            if len(got) >= filler and not notes.pending:
                with contextlib.suppress(BlockingIOError):
                    got += os.read(r, 1 << 16)
                break
            await asyncio.sleep(0.005)
        tick.cancel()
        os.close(r)
        os.close(w)
        return bytes(got[filler:]), ticks_while_full

    text, ticks = asyncio.run(go())
    assert ticks > 1, "the event loop stalled while stderr was full"
    lines = text.decode().splitlines()
    assert lines == [f"note {i} " + "x" * 300 for i in range(50)]


def test_a_busy_live_socket_is_never_taken_over(tmp_path: Path) -> None:
    """A listener too busy to accept (its backlog full) is live. The old check connected
    with a blocking socket on the event loop (stalling it for up to 1 s) and then failed
    with a bare TimeoutError instead of saying why."""
    from katapool.errors import KatapoolError
    from katapool.server.unix_endpoint import serve_unix

    path = tmp_path / "sock" / "katapool.sock"
    path.parent.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(0)
    waiting = []
    with contextlib.suppress(BlockingIOError):
        for _ in range(64):
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            waiting.append(c)
            c.connect(str(path))

    async def go() -> str:
        try:
            await asyncio.wait_for(serve_unix(None, path), 30)  # type: ignore[arg-type]
        except KatapoolError as exc:
            return str(exc)
        raise AssertionError("a live daemon's socket was taken over")

    try:
        message = asyncio.run(go())
    finally:
        for c in waiting:
            c.close()
        listener.close()
    assert "another katapool daemon is listening" in message
    assert path.exists()


@pytest.mark.engine
def test_the_engine_probe_runs_once_per_build_of_the_binary(katago: Path, tmp_path: Path) -> None:
    """FAKE WRAPPER (named as such): execs the real KataGo and counts its `version` runs."""
    from katapool.engine.probe import probe_version

    count = tmp_path / "count"
    wrapper = tmp_path / "katago-counting"

    def write(revision: int) -> None:
        wrapper.write_text(f'#!/bin/sh\n# revision {revision}\n'
                           f'[ "$1" = version ] && echo x >> "{count}"\n'
                           f'exec "{katago}" "$@"\n')
        wrapper.chmod(0o755)

    def runs() -> int:
        return len(count.read_text().splitlines()) if count.exists() else 0

    write(1)
    first = probe_version(wrapper)
    second = probe_version(wrapper)
    assert runs() == 1 and first == second and first.version
    write(22)  # a new build (size and mtime change): asked again
    third = probe_version(wrapper)
    assert runs() == 2 and third.version == first.version


@pytest.mark.engine
def test_an_embedded_pool_probes_its_engine_off_the_event_loop(
        pool_env: Path, katago: Path, tmp_path: Path) -> None:
    """FAKE WRAPPER (named as such): the real KataGo, whose `version` takes 1 s. Building an
    embedded pool inside asyncio code runs nothing; starting it probes (in a worker thread)
    and the pool then reports the engine's version. The old Pool.embedded ran the probe where
    it was called, on the caller's event loop."""
    from conftest import G170

    count = tmp_path / "count"
    wrapper = tmp_path / "katago-slow-version"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = version ]; then echo x >> "{count}"; sleep 1; fi\n'
                       f'exec "{katago}" "$@"\n')
    wrapper.chmod(0o755)

    async def go() -> tuple[bool, str]:
        pool = Pool.embedded(G170, katago=wrapper)
        built_without_running = not count.exists()
        async with pool:
            c = Collector()
            pool.session(c).submit('{"id":"v","action":"query_version"}')
            return built_without_running, c.by_id["v"][0]["version"]

    built_without_running, version = asyncio.run(go())
    assert built_without_running
    assert len(count.read_text().splitlines()) == 1
    assert version and version[0].isdigit()


def test_a_stale_socket_from_a_killed_daemon_is_replaced(tmp_path: Path) -> None:
    from katapool.server.unix_endpoint import serve_unix

    path = tmp_path / "sock" / "katapool.sock"
    path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a SIGKILLed daemon leaves

    async def go() -> bool:
        server = await asyncio.wait_for(serve_unix(None, path), 30)  # type: ignore[arg-type]
        listening = bool(server.sockets) and server.sockets[0].getsockname() == str(path)
        server.close()
        await server.wait_closed()
        return listening

    assert asyncio.run(go())
