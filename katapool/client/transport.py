"""How a client reaches a pool: a daemon's Unix socket, its WebSocket, or a pool embedded in
the caller's process. Each carries KataGo's analysis JSON objects both ways."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

from katapool.errors import KatapoolError
from katapool.pool import Pool
from katapool.pool.router import Session
from katapool.server.state import StateDir

OnMessage = Callable[[dict[str, Any]], None]
OnClosed = Callable[[str], None]
READ_LIMIT = 64 << 20  # a 19x19 response with ownership and policy is ~50 KB; leave room


class ConnectionLost(KatapoolError):
    """The daemon (or the embedded pool) went away."""


class Channel(Protocol):
    description: str

    async def open(self, on_message: OnMessage, on_closed: OnClosed) -> None: ...
    def send(self, message: dict[str, Any]) -> None: ...
    async def close(self) -> None: ...


def _json(message: dict[str, Any]) -> str:
    """Strict JSON: a NaN would be refused by the server without the query's id."""
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise KatapoolError(f"query {message.get('id')!r} holds a value JSON cannot carry "
                            f"(NaN or infinity): {exc}") from None


def _line(message: dict[str, Any]) -> bytes:
    return _json(message).encode() + b"\n"


class UnixChannel:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"unix:{path}"
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._lost = False

    async def open(self, on_message: OnMessage, on_closed: OnClosed) -> None:
        try:
            reader, self._writer = await asyncio.open_unix_connection(str(self.path), limit=READ_LIMIT)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ConnectionLost(f"no katapool daemon at {self.path} (start one with "
                                 "`katapool start`)") from None

        async def read() -> None:
            reason = "the daemon closed the connection"
            try:
                while line := await reader.readline():
                    on_message(json.loads(line))
            except (ConnectionError, OSError, ValueError) as exc:
                reason = f"connection to the daemon failed: {exc}"
            finally:
                self._lost = True
            on_closed(reason)

        self._lost = False
        self._reader_task = asyncio.create_task(read())

    def send(self, message: dict[str, Any]) -> None:
        if self._writer is None or self._writer.is_closing() or self._lost:
            raise ConnectionLost(f"not connected to {self.description}")
        self._writer.write(_line(message))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


class WebSocketChannel:
    def __init__(self, url: str, token: str | None = None) -> None:
        if token:
            parts = urlsplit(url)
            query = "&".join(filter(None, [parts.query, urlencode({"token": token})]))
            url = urlunsplit(parts._replace(query=query))
        self.url = url
        self.description = url.split("?", 1)[0]
        self._ws: Any = None
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._lost = False

    async def open(self, on_message: OnMessage, on_closed: OnClosed) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        try:
            self._ws = ws = await connect(self.url, max_size=READ_LIMIT, compression=None)
        except InvalidStatus as exc:
            body = exc.response.body.decode(errors="replace").strip()
            raise ConnectionLost(f"{self.description}: HTTP {exc.response.status_code}: {body}") from None
        except OSError as exc:
            raise ConnectionLost(f"cannot reach {self.description}: {exc}") from None

        async def read() -> None:
            reason = "the daemon closed the connection"
            try:
                async for frame in ws:
                    text = frame.decode() if isinstance(frame, bytes) else frame
                    for line in text.split("\n"):
                        if line.strip():
                            on_message(json.loads(line))
            except ConnectionClosed as exc:
                reason = f"connection closed: {exc}"
            except ValueError as exc:
                reason = f"unreadable data from the daemon: {exc}"
            finally:
                self._lost = True
            on_closed(reason)

        async def write() -> None:
            while (text := await outbox.get()) is not None:
                try:
                    await ws.send(text)
                except ConnectionClosed:
                    self._lost = True
                    return

        self._lost = False
        outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._outbox = outbox
        self._tasks = [asyncio.create_task(read()), asyncio.create_task(write())]

    def send(self, message: dict[str, Any]) -> None:
        if self._ws is None or self._lost:
            raise ConnectionLost(f"not connected to {self.description}")
        self._outbox.put_nowait(_json(message))

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        if self._ws is not None:
            await self._ws.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class EmbeddedChannel:
    """A pool inside this process; started and closed with the client if it owns it."""

    def __init__(self, pool: Pool, own: bool = True) -> None:
        self.pool = pool
        self.own = own
        self.description = "embedded pool"
        self._session: Session | None = None

    async def open(self, on_message: OnMessage, on_closed: OnClosed) -> None:
        if self.own:
            await self.pool.start(wait="any")
        self._session = self.pool.session(on_message)

    def send(self, message: dict[str, Any]) -> None:
        if self._session is None:
            raise ConnectionLost("the embedded pool is not running")
        self._session.submit(_json(message))

    async def close(self) -> None:
        if self._session is not None:
            self._session.terminate(None)
        if self.own:
            await self.pool.close()


def default_address() -> str:
    """``$KATAPOOL_ADDRESS``, else the local daemon's socket."""
    explicit = os.environ.get("KATAPOOL_ADDRESS")
    if explicit:
        return explicit
    state = StateDir.default()
    recorded = state.root / "socket"
    try:
        return "unix:" + recorded.read_text().strip()
    except OSError:
        return f"unix:{state.socket}"


def channel_for(address: str | None, token: str | None = None) -> Channel:
    address = address or default_address()
    if address.startswith(("ws://", "wss://")):
        return WebSocketChannel(address, token)
    path = address[5:] if address.startswith("unix:") else address
    return UnixChannel(Path(path).expanduser())
