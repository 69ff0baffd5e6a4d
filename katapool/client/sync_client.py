"""The blocking client: the asyncio client run on a background thread (for GUIs and scripts)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from katapool.client.async_client import ACTION_TIMEOUT, ANALYZE_TIMEOUT, AnalysisStream, AsyncClient
from katapool.client.position import Position
from katapool.client.results import Analysis
from katapool.client.transport import ConnectionLost
from katapool.game.record import GameRecord
from katapool.pool import PoolPolicy

T = TypeVar("T")


class Client:
    """Blocking twin of :class:`AsyncClient`; every call is safe from any thread.

    >>> # with Client.connect() as client:
    >>> #     print(client.analyze(Position.from_moves(["Q16", "D4"]), visits=50).best_move)
    """

    def __init__(self, client: AsyncClient, timeout: float | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="katapool-client",
                                        daemon=True)
        self._thread.start()
        self._async = client
        self._stopped = False  # closed: no loop to run calls on
        try:
            self._call(client.open(), timeout)
        except BaseException:
            self._stop_loop()
            raise

    @classmethod
    def connect(cls, address: str | None = None, *, token: str | None = None,
                token_file: str | Path | None = None, timeout: float | None = 30.0) -> Client:
        from katapool.client.transport import channel_for

        return cls(AsyncClient(channel_for(address, token, token_file)), timeout)

    @classmethod
    def embedded(cls, model: str | Path | None = None, *, members: int = 1,
                 gpus: list[int] | None = None, preset: str = "desktop",
                 katago: str | Path | None = None, policy: PoolPolicy | None = None) -> Client:
        return cls(AsyncClient.embedded(model, members=members, gpus=gpus, preset=preset,
                                        katago=katago, policy=policy))

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking katapool Client call from its own event-loop thread "
                               "(use AsyncClient inside asyncio code)")
        if self._stopped:
            coro.close()
            raise ConnectionLost("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():
                raise  # the call's own timeout error (AnalysisTimeout)
            future.cancel()
            raise TimeoutError(f"no answer within {timeout} s") from None
        except BaseException:
            # Interrupted (Ctrl-C): stop the coroutine before anyone touches what it holds.
            if not future.done():
                future.cancel()
                with contextlib.suppress(BaseException):
                    future.result(5)
            raise

    def analyze(self, position: Position, *, visits: int | None = None,
                timeout: float | None = ANALYZE_TIMEOUT, model: str | None = None,
                ownership: bool = False,
                policy: bool = False, **settings: Any) -> Analysis:
        return self._call(self._async.analyze(position, visits=visits, timeout=timeout,
                                              model=model, ownership=ownership, policy=policy,
                                              **settings))

    def analyze_stream(self, position: Position, *, visits: int | None = None, every: float = 0.5,
                       model: str | None = None, ownership: bool = False, policy: bool = False,
                       **settings: Any) -> SyncAnalysisStream:
        async def make() -> AnalysisStream:
            return self._async.analyze_stream(position, visits=visits, every=every, model=model,
                                              ownership=ownership, policy=policy, **settings)

        stream = self._call(make())
        self._call(stream.__aenter__())
        return SyncAnalysisStream(self, stream)

    def analyze_game(self, game: str | bytes | Path | GameRecord, *, visits: int | None = None,
                     turns: list[int] | None = None, model: str | None = None,
                     ownership: bool = False, **settings: Any) -> Iterator[Analysis]:
        results = self._async.analyze_game(game, visits=visits, turns=turns, model=model,
                                           ownership=ownership, **settings)
        return self._iterate(results)

    def _iterate(self, results: AsyncIterator[T], close: bool = True) -> Iterator[T]:
        """Blocking iteration; an abandoned iterator closes ``results`` unless ``close`` is
        False (a stream is closed by its own ``with`` block, and may be iterated in parts)."""
        try:
            while True:
                try:
                    yield self._call(anext(results))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            closer = getattr(results, "aclose", None) if close else None
            if closer is not None and self._loop.is_running():
                if threading.current_thread() is self._thread:
                    # Finalised by the garbage collector on the loop's own thread: never block it.
                    self._loop.create_task(closer())
                else:
                    with contextlib.suppress(RuntimeError, TimeoutError):
                        self._call(closer(), 30)

    def cancel(self, query_id: str | None = None) -> None:
        self._call(self._async.cancel(query_id))

    def reconnect(self, timeout: float | None = 30.0) -> None:
        """Connect again after :class:`ConnectionLost` (a daemon restarted); the queries in
        flight when it was lost are not sent again."""
        self._call(self._async.open(), timeout)

    def query_version(self, *, timeout: float | None = ACTION_TIMEOUT) -> dict[str, Any]:
        return self._call(self._async.query_version(timeout=timeout))

    def query_models(self, *, timeout: float | None = ACTION_TIMEOUT) -> list[dict[str, Any]]:
        return self._call(self._async.query_models(timeout=timeout))

    def close(self) -> None:
        if self._loop.is_running():
            try:
                self._call(self._async.close(), 60)
            finally:
                self._stop_loop()

    def _stop_loop(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._loop.shutdown_asyncgens(), 10)
        self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SyncAnalysisStream:
    """Iterate for partial results, then the final one; ``with`` stops the search at exit."""

    def __init__(self, client: Client, stream: AnalysisStream) -> None:
        self._client = client
        self._stream = stream
        self.id = stream.id

    @property
    def final(self) -> Analysis | None:
        return self._stream.final

    def __iter__(self) -> Iterator[Analysis]:
        return self._client._iterate(self._stream, close=False)

    def cancel(self) -> None:
        self._client._call(self._stream.cancel())

    def close(self) -> None:
        """Stop the search and forget the query (safe while another thread iterates: that
        iteration then ends with the final response)."""
        self._client._call(self._stream.aclose())

    def __enter__(self) -> SyncAnalysisStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
