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
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from katapool.errors import ConfigError, KatapoolError
from katapool.pool import Pool
from katapool.pool.router import Session
from katapool.server.state import TOKEN_ENV, StateDir, check_token, read_token_file

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


def _message(line: str | bytes) -> dict[str, Any]:
    """One answer line; anything but a JSON object is not KataGo's protocol (a ValueError,
    which ends the connection with that reason rather than the reader alone)."""
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError(f"not a JSON object: {line[:200]!r}")
    return msg


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
        except OSError as exc:  # a socket of another user's, a path too long for a socket
            raise ConnectionLost(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        writer = self._writer

        async def read() -> None:
            reason = "the daemon closed the connection"
            try:
                while line := await reader.readline():
                    on_message(_message(line))
            except (ConnectionError, OSError) as exc:
                reason = f"connection to the daemon failed: {exc}"
            except ValueError as exc:
                reason = f"unreadable data from the daemon: {exc}"
                writer.close()  # nobody reads the answers now: the daemon stops our queries
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
        from websockets.exceptions import InvalidURI
        from websockets.uri import parse_uri

        try:
            parse_uri(url)
        except InvalidURI as exc:  # named without its query: a ?token= stays out of logs
            raise KatapoolError(f"{url.split('?', 1)[0]!r} is not a WebSocket address: "
                                f"{exc.msg}") from None
        self.headers: dict[str, str] = {}
        if token:
            # In a header rather than the URL, where proxies and logs keep it; one in the
            # address gives way to the one given here.
            parts = urlsplit(url)
            query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                               if k != "token"])
            url = urlunsplit(parts._replace(query=query))
            self.headers["Authorization"] = f"Bearer {token}"
        self.url = url
        self.description = url.split("?", 1)[0]
        self._ws: Any = None
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._lost = False

    async def open(self, on_message: OnMessage, on_closed: OnClosed) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        try:
            self._ws = ws = await connect(self.url, max_size=READ_LIMIT, compression=None,
                                            additional_headers=self.headers)
        except InvalidStatus as exc:
            body = exc.response.body.decode(errors="replace").strip()
            raise ConnectionLost(f"{self.description}: HTTP {exc.response.status_code}: {body}") from None
        except InvalidHandshake as exc:  # something answered, but not a WebSocket server
            raise ConnectionLost(f"{self.description} is not a katapool WebSocket endpoint: "
                                 f"{exc}") from None
        except OSError as exc:
            raise ConnectionLost(f"cannot reach {self.description}: {exc}") from None

        async def read() -> None:
            reason = "the daemon closed the connection"
            try:
                async for frame in ws:
                    text = frame.decode() if isinstance(frame, bytes) else frame
                    for line in text.split("\n"):
                        if line.strip():
                            on_message(_message(line))
                if ws.close_reason:  # e.g. "katapool is stopping"
                    reason = f"the daemon closed the connection: {ws.close_reason}"
            except ConnectionClosed as exc:
                reason = f"connection closed: {exc}"
            except ValueError as exc:
                reason = f"unreadable data from the daemon: {exc}"
                await ws.close(1002, "katapool client: unreadable data")
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


def resolve_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The token a WebSocket client presents: ``token``, else the one in ``token_file`` (which
    must be private to its owner), else ``$KATAPOOL_TOKEN``; None leaves the address's own
    ``?token=``, if any."""
    if token:
        return check_token(token.strip(), "the token given")
    if token_file is not None:
        return read_token_file(Path(token_file).expanduser())
    from_env = os.environ.get(TOKEN_ENV)
    if from_env:
        return check_token(from_env.strip(), f"${TOKEN_ENV}")
    return None


def channel_for(address: str | None, token: str | None = None,
                token_file: str | Path | None = None) -> Channel:
    """A channel to ``address``; tokens only matter to a WebSocket (a Unix socket is
    private to its owner)."""
    address = address or default_address()
    if address.startswith(("ws://", "wss://")):
        return WebSocketChannel(address, resolve_token(token, token_file))
    if "://" in address:  # else taken for a socket path: "no daemon at nonsense:/x"
        raise ConfigError(f"{address!r} is not a daemon address: use unix:PATH, a socket path "
                          "or ws://HOST:PORT (wss:// with TLS)")
    path = address[5:] if address.startswith("unix:") else address
    return UnixChannel(Path(path).expanduser())
