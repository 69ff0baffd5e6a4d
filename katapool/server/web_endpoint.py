"""The network endpoint: KataGo analysis JSON over WebSocket text frames (KaTrain's remote
engine framing), plus HTTP ``/healthz`` and Prometheus ``/metrics`` on the same port.

Bound to loopback by default. Bound elsewhere, a token is required: ``?token=...`` in the
URL (KaTrain's remote engine can only pass a URL) or ``Authorization: Bearer ...``.

Without a token, the ``Host`` header must name this machine's loopback (or a name listed in
``listen.hosts``): a web page whose own domain was re-pointed at 127.0.0.1 (DNS rebinding)
sends its own domain there, and would otherwise reach the daemon as if it were local.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, MultipleValuesError
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from katapool.config.poolfile import is_loopback
from katapool.server.framing import LINES_PER_TURN, oversized_error, text_lines
from katapool.server.hub import Hub
from katapool.server.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)


class WebEndpoint:
    def __init__(self, hub: Hub, metrics: Metrics, token: str | None,
                 origins: list[str] | None = None, hosts: list[str] | None = None) -> None:
        self.hub = hub
        self.metrics = metrics
        self.token = token  # None: no token needed
        self.origins = set(origins or [])
        self.hosts = {host_name(h) or h.lower() for h in hosts or []}  # a port there is ignored

    async def serve(self, host: str, port: int) -> Server:
        limit = self.hub.limits.max_line_bytes
        # Frames a little over the line limit get a JSON error; far over, the library
        # closes the connection with 1009 (message too big) before reading it all.
        return await serve(self._handle, host, port, process_request=self._http,
                           max_size=limit * 2 + 65536, compression=None,
                           ping_interval=20, ping_timeout=60)

    def _authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _host_allowed(self, request: Request) -> bool:
        """With a token, the token decides. Without one, only this machine's own names: a
        browser sends the name it connected to, and a rebound domain is not one of them."""
        if self.token is not None:
            return True
        name = host_name(request.headers.get("Host", ""))
        return name is not None and (is_loopback(name) or name in self.hosts)

    def _origin_allowed(self, request: Request) -> bool:
        """Browsers send an Origin with every WebSocket; a page on another site must not use
        the daemon. Allowed: no Origin (programs), a page served from this machine's
        loopback, one listed in ``listen.origins``, and, only where a token is required
        (it keeps everyone else out), the daemon's own address, which websocket-client
        (KaTrain) sends by default."""
        origin = request.headers.get("Origin")
        if origin is None or origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.path or parts.query:
            return False
        name = host_name(parts.netloc)
        if name is not None and is_loopback(name):
            return True
        host = request.headers.get("Host", "")
        return self.token is not None and origin in (f"http://{host}", f"https://{host}")

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            ready = self.hub.ready.is_set() and any(
                m.ready for s in self.hub.served.values() for m in s.pool.members())
            body = json.dumps({"live": True, "ready": ready}) + "\n"
            response = connection.respond(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                                          body)
            response.headers["Content-Type"] = "application/json"
            return response
        try:
            host_ok, origin_ok = self._host_allowed(request), self._origin_allowed(request)
            authorised = self._authorised(request)
        except (MultipleValuesError, ValueError):  # two Host headers, an origin urlsplit refuses
            return connection.respond(HTTPStatus.BAD_REQUEST, "katapool: malformed or repeated "
                                      "Host, Origin or Authorization header\n")
        if not host_ok:
            return connection.respond(HTTPStatus.FORBIDDEN,
                                      f"katapool: Host {request.headers.get('Host')!r} is not "
                                      "allowed without a token (connect to localhost, 127.0.0.1 "
                                      "or [::1], or list the name in listen.hosts)\n")
        if not origin_ok:
            return connection.respond(HTTPStatus.FORBIDDEN,
                                      f"katapool: origin {request.headers.get('Origin')} is not "
                                      "allowed (listen.origins)\n")
        if not authorised:
            return connection.respond(HTTPStatus.UNAUTHORIZED,
                                      "katapool: missing or wrong token (add ?token=TOKEN to the "
                                      "URL, or send 'Authorization: Bearer TOKEN'; the token is in "
                                      "the daemon's token file)\n")
        if path == "/metrics":
            metrics = self.metrics.render()
            return Response(200, "OK", Headers([("Content-Type", CONTENT_TYPE),
                                                ("Content-Length", str(len(metrics)))]), metrics)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return connection.respond(HTTPStatus.NOT_FOUND, "katapool: WebSocket analysis "
                                      "endpoint; also /healthz and /metrics\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        outbox: asyncio.Queue[str | None] = asyncio.Queue()
        limit = self.hub.limits.max_line_bytes
        unread_max = self.hub.limits.max_unread_bytes
        queued = [0]  # bytes waiting in outbox

        def deliver(msg: dict[str, Any]) -> None:
            text = json.dumps(msg, separators=(",", ":")) + "\n"
            if queued[0] + len(text) > unread_max:
                # Expected of a stuck client (limits.max_unread_bytes): a warning, no traceback.
                log.warning("%s does not read its answers: closing it", peer)
                conn.close()  # its queries are terminated; later answers are dropped
                closing = asyncio.get_running_loop().create_task(
                    ws.close(1008, "katapool: too many unread answers"))
                _closing.add(closing)
                closing.add_done_callback(_closing.discard)
                return
            queued[0] += len(text)
            outbox.put_nowait(text)

        peer = f"ws:{ws.remote_address[0] if ws.remote_address else '?'}"
        conn = self.hub.connect(deliver, peer=peer, control=False,
                                hang_up=lambda: ws.close(1001, "katapool is stopping"))
        if conn.refused is not None:  # limits.max_connections: told why, then closed
            conn.close()
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"error": conn.refused}) + "\n")
                await ws.close(1013, "katapool: too many connections")
            return
        sender = asyncio.create_task(self._send(ws, outbox, queued))
        try:
            async for message in ws:
                if conn.closed:
                    break
                text = message.decode("utf-8", errors="replace") if isinstance(message, bytes) \
                    else message
                # A frame may hold several newline-separated queries.
                for count, line in enumerate(text_lines(text), 1):
                    if conn.closed:
                        break
                    if len(line.encode()) > limit:
                        conn.deliver(oversized_error(limit, line[:4096].encode()))
                    elif line.strip():
                        conn.submit(line)
                    if count % LINES_PER_TURN == 0:
                        await asyncio.sleep(0)  # let the other clients have their turn
        except ConnectionClosed:
            pass
        finally:
            conn.close()  # its queries are terminated in the engines
            outbox.put_nowait(None)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    @staticmethod
    async def _send(ws: ServerConnection, outbox: asyncio.Queue[str | None], queued: list[int]) -> None:
        while (text := await outbox.get()) is not None:
            queued[0] -= len(text)
            try:
                await ws.send(text)
            except ConnectionClosed:
                return


_closing: set[asyncio.Task[None]] = set()  # close handshakes under way (kept from the GC)


def host_name(value: str) -> str | None:
    """The host of a ``Host`` header or an origin's ``host[:port]``, lower-cased, IPv6
    without brackets; None when it is not of that form."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return name
    name, sep, port = value.partition(":")
    if sep and not port.isdigit():
        return None
    return name or None
