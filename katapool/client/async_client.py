"""The asyncio client: analyse positions and games through a daemon or an embedded pool."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

from katapool.client.position import Position, game_record
from katapool.client.results import Analysis, QueryWarning
from katapool.client.transport import Channel, ConnectionLost, EmbeddedChannel, channel_for
from katapool.errors import KatapoolError
from katapool.game.record import GameRecord
from katapool.pool import Pool, PoolPolicy
from katapool.protocol.analysis import is_final

_END = object()
log = logging.getLogger(__name__)


def _warning(msg: dict[str, Any], query_id: str) -> QueryWarning | None:
    """KataGo's warning about a query (an unknown field, a mistyped setting), logged once."""
    if "warning" not in msg or "turnNumber" in msg:
        return None
    warning = QueryWarning.model_validate(msg)
    log.warning("query %s: KataGo: %s", query_id, warning)
    return warning

# `analyze` gives up after this long by default (seconds): far above any usual search, so
# that a lost query or a pool that cannot start ends in an error rather than a hang.
ANALYZE_TIMEOUT = 600.0
# Actions are answered at once by a working pool; query_models waits for a ready member.
ACTION_TIMEOUT = 60.0


class QueryError(KatapoolError):
    """KataGo (or katapool) refused a query; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None, query_id: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.query_id = query_id


class AnalysisTimeout(KatapoolError, TimeoutError):
    """No final result within the call's timeout (the query has been terminated)."""


class ActionTimeout(KatapoolError, TimeoutError):
    """No answer to an action (``query_version``, ``query_models``) within the call's timeout."""


class _Pending:
    def __init__(self, turns: set[int]) -> None:
        self.turns = set(turns)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.open = True  # no final answer, error or lost connection yet
        self.terminated = False  # asked to stop (cancel)


class AsyncClient:
    """Talks KataGo's analysis protocol to a pool.

    >>> # async with await AsyncClient.connect() as client:        # a running daemon
    >>> # async with AsyncClient.embedded(model="net.bin.gz") as client:  # a pool in-process
    >>> #     result = await client.analyze(Position.from_moves(["Q16"]), visits=100)
    >>> #     print(result.best_move, result.root_info.winrate_for("W"))
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:6]
        self._closed_reason: str | None = None
        self._opened = False

    # --- opening and closing ------------------------------------------------------------------

    @classmethod
    async def connect(cls, address: str | None = None, *, token: str | None = None,
                      token_file: str | Path | None = None) -> AsyncClient:
        """Connect to a daemon: ``unix:/path``, a socket path, or ``ws://host:port/``
        (default: ``$KATAPOOL_ADDRESS`` or the local daemon's socket). A WebSocket's token:
        ``token``, else ``token_file``, else ``$KATAPOOL_TOKEN``."""
        client = cls(channel_for(address, token, token_file))
        await client.open()
        return client

    @classmethod
    def embedded(cls, model: str | Path | None = None, *, members: int = 1,
                 gpus: list[int] | None = None, preset: str = "desktop",
                 katago: str | Path | None = None, policy: PoolPolicy | None = None,
                 pool: Pool | None = None) -> AsyncClient:
        """A client with its own pool in this process (started on ``open``/``async with``)."""
        own = pool is None
        pool = pool or Pool.embedded(model, members=members, gpus=gpus, preset=preset,
                                     katago=katago, policy=policy)
        return cls(EmbeddedChannel(pool, own=own))

    async def open(self) -> None:
        """Connect (or start the embedded pool). After a lost connection (a daemon restarted)
        it connects again: the queries that were in flight then have failed with
        :class:`ConnectionLost` and are not sent again — nothing is answered twice."""
        if self._opened and self._closed_reason is not None:
            self._opened = False
            await self.channel.close()  # the old connection's reader, if it still runs
        if not self._opened:
            self._closed_reason = None
            await self.channel.open(self._on_message, self._on_closed)
            self._opened = True

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self.channel.close()
            self._on_closed("client closed")

    async def __aenter__(self) -> AsyncClient:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # --- messages -------------------------------------------------------------------------------

    def _on_message(self, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        pending = self._pending.get(rid) if isinstance(rid, str) else None
        if pending is not None:
            pending.queue.put_nowait(msg)

    def _on_closed(self, reason: str) -> None:
        self._closed_reason = reason
        for pending in self._pending.values():
            pending.queue.put_nowait(ConnectionLost(f"{self.channel.description}: {reason}"))
        self._pending.clear()

    def _new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _check_open(self) -> None:
        if not self._opened:
            raise ConnectionLost("the client is not open (use `async with` or `await open()`)")
        if self._closed_reason is not None:
            raise ConnectionLost(f"{self.channel.description}: {self._closed_reason}")

    def _send(self, query: dict[str, Any], turns: set[int]) -> _Pending:
        self._check_open()
        qid = query.get("id")
        if not isinstance(qid, str):
            raise QueryError('a query needs a string "id"', "id")
        if qid in self._pending:
            raise QueryError(f"query id {qid!r} is already in flight on this client", "id", qid)
        pending = self._pending[qid] = _Pending(turns)
        try:
            self.channel.send(query)
        except Exception:
            self._pending.pop(qid, None)
            raise
        return pending

    def _forget(self, qid: str, pending: _Pending) -> None:
        if self._pending.get(qid) is pending:
            del self._pending[qid]

    def request(self, query: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Send any KataGo query now (an ``id`` is added if missing); iterate the result for
        every response to it, partial and final, until it is complete. Errors raise
        :class:`QueryError`."""
        query = {"id": query.get("id", self._new_id()), **query}  # id first: seen in any error
        action = query.get("action")
        if action is None:
            moves = query.get("moves") or []
            turns = set(query.get("analyzeTurns") or [len(moves)])
        else:
            turns = set()
        pending = self._send(query, turns)
        return self._responses(query, pending, action)

    async def _responses(self, query: dict[str, Any], pending: _Pending,
                         action: Any) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                msg = await pending.queue.get()
                if isinstance(msg, BaseException):
                    pending.open = False
                    raise msg
                if "error" in msg:
                    pending.open = False
                    raise QueryError(str(msg["error"]), msg.get("field"), query["id"])
                if action is None and is_final(msg) and "turnNumber" in msg:
                    pending.turns.discard(msg["turnNumber"])
                done = action is not None or not pending.turns
                pending.open = not done
                yield msg
                if done:
                    return
        finally:
            if pending.open and action is None and not pending.terminated:
                # Abandoned unfinished (a cancelled task, asyncio.wait_for, Ctrl-C in the
                # blocking client, a loop left early): stop the search, which would
                # otherwise run to its end for nobody.
                with contextlib.suppress(KatapoolError):
                    self._terminate(query["id"])
            self._forget(query["id"], pending)

    # --- analysis -------------------------------------------------------------------------------

    def _query(self, position: Position, visits: int | None, model: str | None, ownership: bool,
               policy: bool, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
        if model is not None and isinstance(self.channel, EmbeddedChannel):
            raise QueryError("an embedded pool serves one network: `model` selects among a "
                             "daemon's models", "model")
        q = {"id": self._new_id(), **position.query(**extra)}
        if visits is not None:
            q["maxVisits"] = visits
        if ownership:
            q["includeOwnership"] = True
        if policy:
            q["includePolicy"] = True
        if model is not None:
            q["model"] = model
        # Values from Black's view, whatever the server's config says (or the caller asks):
        # results then carry an unambiguous perspective (see Analysis.*_for).
        q["overrideSettings"] = {**settings, "reportAnalysisWinratesAs": "BLACK"}
        return q

    async def analyze(self, position: Position, *, visits: int | None = None,
                      timeout: float | None = ANALYZE_TIMEOUT, model: str | None = None,
                      ownership: bool = False, policy: bool = False,
                      **settings: Any) -> Analysis:
        """The final analysis of ``position``. ``settings`` go to KataGo's
        ``overrideSettings`` (e.g. ``wideRootNoise=0.04``). With no final result within
        ``timeout`` seconds (default :data:`ANALYZE_TIMEOUT`; None waits for ever) the query
        is terminated and :class:`AnalysisTimeout` raised."""
        query = self._query(position, visits, model, ownership, policy, settings)
        stream = AnalysisStream(self, query)
        try:
            async with asyncio.timeout(timeout):
                async for result in stream:
                    if not result.is_during_search:
                        return result
        except TimeoutError:  # the query was terminated as its responses were abandoned
            raise AnalysisTimeout(f"no result for query {query['id']} within {timeout:g} s "
                                  "(terminated)") from None
        raise QueryError("the query ended without a result", query_id=query["id"])

    def analyze_stream(self, position: Position, *, visits: int | None = None,
                       every: float = 0.5, model: str | None = None, ownership: bool = False,
                       policy: bool = False, **settings: Any) -> AnalysisStream:
        """Partial results every ``every`` seconds while KataGo searches, then the final one.
        Use as ``async with`` (the search stops when the block ends) or iterate directly."""
        query = self._query(position, visits, model, ownership, policy, settings,
                            reportDuringSearchEvery=every)
        return AnalysisStream(self, query)

    async def analyze_game(self, game: str | bytes | Path | GameRecord, *,
                           visits: int | None = None, turns: list[int] | None = None,
                           model: str | None = None, ownership: bool = False,
                           **settings: Any) -> AsyncIterator[Analysis]:
        """One final result per position of a game (turn 0 is the empty board, turn N the
        position after move N), in turn order, from one query the pool may split."""
        record = game_record(game)
        position = Position.from_record(record)
        wanted = sorted(set(turns)) if turns is not None else list(range(len(record.moves) + 1))
        query = self._query(position, visits, model, ownership, False, settings,
                            analyzeTurns=wanted)
        early: dict[int, Analysis] = {}
        next_index = 0
        warnings: list[QueryWarning] = []
        responses = self.request(query)
        try:
            async for msg in responses:
                warning = _warning(msg, query["id"])
                if warning is not None:
                    warnings.append(warning)
                if not is_final(msg):
                    continue
                result = Analysis.model_validate({**msg, "warnings": warnings})
                early[result.turn_number] = result
                while next_index < len(wanted) and wanted[next_index] in early:
                    yield early.pop(wanted[next_index])
                    next_index += 1
        finally:
            if next_index < len(wanted):  # abandoned (or failed): stop the rest of the game
                with contextlib.suppress(KatapoolError):
                    await self.cancel(query["id"])
            await responses.aclose()  # type: ignore[attr-defined]

    async def cancel(self, query_id: str | None = None) -> None:
        """Stop one query (or all of this client's); their final responses still arrive."""
        self._terminate(query_id)

    def _terminate(self, query_id: str | None) -> None:
        self._check_open()
        stopped = self._pending.values() if query_id is None \
            else [p for p in [self._pending.get(query_id)] if p is not None]
        for pending in stopped:
            pending.terminated = True
        if query_id is None:
            self.channel.send({"id": self._new_id(), "action": "terminate_all"})
        else:
            self.channel.send({"id": self._new_id(), "action": "terminate", "terminateId": query_id})

    async def query_version(self, *, timeout: float | None = ACTION_TIMEOUT) -> dict[str, Any]:
        return await self._action("query_version", timeout)

    async def query_models(self, *, timeout: float | None = ACTION_TIMEOUT
                           ) -> list[dict[str, Any]]:
        """The networks served (the pool asks its members: it waits for one to be ready)."""
        return list((await self._action("query_models", timeout)).get("models", []))

    async def _action(self, action: str, timeout: float | None) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                async for msg in self.request({"action": action}):
                    return msg
        except TimeoutError:
            raise ActionTimeout(f"no answer to {action} within {timeout:g} s from "
                                f"{self.channel.description}") from None
        raise QueryError(f"no answer to {action}")


class AnalysisStream:
    """Results of one query as they come (partial, then final); cancel to stop the search."""

    def __init__(self, client: AsyncClient, query: dict[str, Any]) -> None:
        self.client = client
        self.query = query
        self.id: str = query["id"]
        self.final: Analysis | None = None
        self.warnings: list[QueryWarning] = []  # KataGo's, about this query; also on each result
        self._responses: AsyncIterator[dict[str, Any]] | None = None

    def _start(self) -> AsyncIterator[dict[str, Any]]:
        if self._responses is None:
            self._responses = self.client.request(self.query)
        return self._responses

    def __aiter__(self) -> AnalysisStream:
        return self

    async def __anext__(self) -> Analysis:
        if self.final is not None:
            raise StopAsyncIteration
        while True:
            msg = await anext(self._start())
            if "turnNumber" not in msg:
                warning = _warning(msg, self.id)
                if warning is not None:
                    self.warnings.append(warning)
                continue
            result = Analysis.model_validate({**msg, "warnings": self.warnings})
            if not result.is_during_search:
                self.final = result
            return result

    async def cancel(self) -> None:
        """Stop the search; iterating further yields its last (final) response."""
        if self._responses is not None and self.final is None:
            with contextlib.suppress(ConnectionLost):
                await self.client.cancel(self.id)

    async def aclose(self) -> None:
        """Stop the search (if still running) and forget the query."""
        await self.cancel()
        if self._responses is not None:
            with contextlib.suppress(RuntimeError):  # being iterated elsewhere: it ends itself
                await self._responses.aclose()  # type: ignore[attr-defined]
            pending = self.client._pending.get(self.id)
            if pending is not None and not self._iterating:
                self.client._forget(self.id, pending)

    @property
    def _iterating(self) -> bool:
        frame = getattr(self._responses, "ag_running", False)
        return bool(frame)

    async def __aenter__(self) -> AnalysisStream:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
