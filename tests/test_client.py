"""The Python client on a pool embedded in the test process (the real engine)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import G170, SAMPLE_SGF, SHORT_SGF, Katapool
from katapool.client import (
    ActionTimeout,
    AnalysisTimeout,
    AsyncClient,
    Client,
    ConnectionLost,
    Position,
    QueryError,
)
from katapool.errors import KatapoolError
from katapool.game.record import load_sgf
from katapool.pool import Pool

pytestmark = pytest.mark.engine


async def wait_idle(pool: Pool, what: str) -> None:
    """Until the pool owes nothing; the bound is a hang guard only (the queries waited for
    here would run for many minutes if they were not stopped)."""
    await asyncio.wait_for(pool.drain(), 120)
    assert pool.outstanding == 0, what


@pytest.fixture
def engine_env(kp: Katapool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KATAPOOL_DATA_DIR", str(kp.data_dir))
    monkeypatch.delenv("KATAPOOL_KATAGO", raising=False)
    monkeypatch.delenv("KATAPOOL_MODEL", raising=False)
    yield kp.data_dir


def test_async_client_embedded(engine_env: Path) -> None:
    async def go() -> None:
        async with AsyncClient.embedded(G170, members=2) as client:
            pool = client.channel.pool  # type: ignore[attr-defined]
            assert isinstance(pool, Pool)
            # Perspective: values come from Black's view whatever the side to move.
            p = Position.from_moves(["Q16", "D4", "Q3"])
            r = await client.analyze(p, visits=16, ownership=True, policy=True)
            assert r.root_info is not None and r.root_info.current_player == p.next_player == "W"
            assert r.visits >= 16 and r.best_move and len(r.ownership or []) == 361
            assert len(r.policy or []) == 362
            assert r.root_info.winrate_for("W") == pytest.approx(1 - r.root_info.winrate)

            # Streaming: partial results, then the final one after cancel.
            seen = []
            async with client.analyze_stream(p, visits=100_000, every=0.2) as stream:
                async for info in stream:
                    seen.append(info)
                    if len(seen) == 3:
                        await stream.cancel()
            assert [s.is_during_search for s in seen[:3]] == [True, True, True]
            assert stream.final is seen[-1] and not stream.final.is_during_search
            assert stream.final.visits < 100_000
            visits = [s.visits for s in seen]
            assert visits == sorted(visits)

            # A per-call timeout ends in AnalysisTimeout and frees the pool: the query is
            # terminated (its search cut short), not left to run its 100,000 visits.
            def visits_done() -> int:
                return sum(m.visits_done for m in pool.members())

            before = visits_done()
            with pytest.raises(AnalysisTimeout):
                await client.analyze(p, visits=100_000, timeout=1.0)
            await wait_idle(pool, "the timed-out query to be terminated")
            assert visits_done() - before < 100_000
            # So is one whose caller gives up on its own (a cancelled task, wait_for).
            before = visits_done()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.analyze(p, visits=100_000, timeout=None), 1.0)
            await wait_idle(pool, "the abandoned query to be terminated")
            assert visits_done() - before < 100_000

            # Whole game: one result per position, in turn order.
            record = load_sgf(SAMPLE_SGF)
            turns = [a.turn_number async for a in client.analyze_game(SAMPLE_SGF, visits=1,
                                                                       turns=list(range(0, 60, 3)))]
            assert turns == list(range(0, 60, 3))
            n = 0
            async for a in client.analyze_game(SHORT_SGF.read_text(), visits=1):
                assert a.turn_number == n and not a.is_during_search
                n += 1
            assert n == len(load_sgf(SHORT_SGF).moves) + 1

            # Leaving a whole-game analysis early stops the rest of the game in the engines.
            before = visits_done()
            async with contextlib.aclosing(client.analyze_game(SAMPLE_SGF, visits=50)) as game:
                async for a in game:
                    assert a.turn_number == 0
                    break
            await wait_idle(pool, "the abandoned game to be terminated")
            assert visits_done() - before < (len(record.moves) + 1) * 50 // 2, \
                "most of the abandoned game was analysed anyway"

            # KataGo's own refusal reaches the caller as a QueryError naming the field.
            with pytest.raises(QueryError) as info:
                await client.analyze(Position.from_moves(["Z99"]), visits=1)
            assert info.value.field == "moves"
            with pytest.raises(QueryError, match="embedded pool serves one network"):
                await client.analyze(p, visits=1, model="other")
            version = await client.query_version()
            assert version["version"] == "1.18.1"

    asyncio.run(go())


def test_sync_client_embedded(engine_env: Path) -> None:
    with Client.embedded(G170) as client:
        p = Position.from_sgf(SAMPLE_SGF, move_number=20)
        r = client.analyze(p, visits=8)
        assert r.turn_number == 20 and r.visits >= 8
        with client.analyze_stream(p, visits=100_000, every=0.2) as stream:
            first = next(iter(stream))
            assert first.is_during_search
            stream.cancel()
            rest = list(stream)
        assert rest and not rest[-1].is_during_search and stream.final is rest[-1]
        results = list(client.analyze_game(SAMPLE_SGF, visits=1, turns=[0, 10, 20]))
        assert [a.turn_number for a in results] == [0, 10, 20]
        with pytest.raises(AnalysisTimeout):
            client.analyze(p, visits=100_000, timeout=0.5)
        # Still usable after a timeout.
        assert client.analyze(p, visits=2).visits >= 2
    with pytest.raises(ConnectionLost, match="closed"):  # and says so once closed
        client.analyze(p, visits=2)


def test_connection_failures_are_katapool_errors(tmp_path: Path) -> None:
    """Whatever is (or is not) at the address, a script's ``except KatapoolError`` sees it."""
    with socket.create_server(("127.0.0.1", 0)) as server:  # something that is not HTTP
        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        threading.Thread(target=answer, daemon=True).start()
        with pytest.raises(ConnectionLost, match="not a katapool WebSocket endpoint"):
            Client.connect(f"ws://127.0.0.1:{server.getsockname()[1]}/")
    with pytest.raises(KatapoolError, match="not a WebSocket address") as bad:
        Client.connect("ws://?token=s3cret")
    assert "s3cret" not in str(bad.value)
    with pytest.raises(ConnectionLost, match="too long"):
        Client.connect(f"unix:{tmp_path / ('x' * 120)}")


def test_actions_time_out_with_a_clear_error(tmp_path: Path) -> None:
    """A peer that never answers (a scripted fake daemon: a hung one cannot be made on cue)
    ends query_version/query_models with ActionTimeout, and the client stays usable."""
    path = tmp_path / "silent.sock"

    async def silent_daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads everything, answers nothing
        writer.close()

    async def go() -> None:
        server = await asyncio.start_unix_server(silent_daemon, path=str(path))
        async with server, await AsyncClient.connect(f"unix:{path}") as client:
            with pytest.raises(ActionTimeout, match="no answer to query_version within 0.5 s"):
                await client.query_version(timeout=0.5)
            with pytest.raises(ActionTimeout, match="query_models"):
                await client.query_models(timeout=0.5)
            assert not client._pending  # nothing left waiting for an answer

    asyncio.run(go())


def test_unreadable_answer_fails_the_query(tmp_path: Path) -> None:
    """A peer that answers with something other than JSON objects (a scripted fake daemon:
    the real one never does) fails the query at once, instead of leaving it to time out."""
    path = tmp_path / "fake.sock"

    async def fake_daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"[1]\n")
        await reader.read()  # until the client hangs up
        writer.close()

    async def go() -> None:
        server = await asyncio.start_unix_server(fake_daemon, path=str(path))
        async with server, await AsyncClient.connect(f"unix:{path}") as client:
            with pytest.raises(ConnectionLost, match="not a JSON object"):
                await client.analyze(Position.from_moves(["Q16"]), visits=1, timeout=60)

    asyncio.run(go())
