"""The Unix socket: KataGo's analysis JSON lines, owner-only (mode 0600). Also the daemon's
control channel (status, stop, reload), since only its owner can reach it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import stat
from pathlib import Path
from typing import Any

from katapool.errors import KatapoolError
from katapool.server.framing import LINES_PER_TURN, LineFramer, oversized_error
from katapool.server.hub import Hub
from katapool.server.state import private_dir

log = logging.getLogger(__name__)


async def serve_unix(hub: Hub, path: Path) -> asyncio.Server:
    private_dir(path.parent)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise KatapoolError(f"{path} exists and is not a socket: not replacing it")
        if await _someone_listens(path):
            raise KatapoolError(f"another katapool daemon is listening on {path}")
        path.unlink(missing_ok=True)  # stale, from a daemon that was killed

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(hub, reader, writer)

    old = os.umask(0o177)  # created 0600: no window where others could connect
    try:
        server = await asyncio.start_unix_server(handle, path=str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


async def _someone_listens(path: Path, timeout: float = 1.0) -> bool:
    """Whether a live server accepts on ``path``: asked without blocking the event loop (a
    listener that is alive but too busy to accept counts as live)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def _serve_connection(hub: Hub, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    unread_max = hub.limits.max_unread_bytes

    def deliver(msg: dict[str, Any]) -> None:
        if transport.is_closing():
            return
        data = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        if transport.get_write_buffer_size() + len(data) > unread_max:
            # A client that reads nothing is cut off alone (limits.max_unread_bytes).
            log.warning("unix client has %d bytes of answers unread: disconnecting it",
                        transport.get_write_buffer_size())
            transport.abort()
            return
        transport.write(data)

    async def hang_up() -> None:
        writer.close()  # the client reads end of stream; this handler then ends by itself

    conn = hub.connect(deliver, peer="unix", control=True, hang_up=hang_up)
    limit = hub.limits.max_line_bytes
    framer = LineFramer(limit)
    try:
        while not conn.closed:
            data = await reader.read(1 << 16)
            # At end of input a last line without a newline still counts, as in KataGo.
            for count, line in enumerate(framer.feed(data) if data else framer.finish(), 1):
                if isinstance(line, tuple):
                    conn.deliver(oversized_error(limit, line[1]))
                else:
                    conn.submit(line.decode("utf-8", errors="replace"))
                if count % LINES_PER_TURN == 0:
                    await asyncio.sleep(0)  # let the other clients have their turn
            if not data:
                break
        # End of input: like `katago analysis`, answer what was asked, unless the client
        # has gone for good (then its queries are stopped).
        await _drain_unless_gone(conn, writer)
    except (ConnectionError, OSError):
        pass
    finally:
        conn.close()
        # Let answers already written (e.g. a stop acknowledgement) reach the client.
        with contextlib.suppress(Exception):
            writer.write_eof()
            await asyncio.wait_for(writer.drain(), 5)
        writer.close()


async def _drain_unless_gone(conn: Any, writer: asyncio.StreamWriter) -> None:
    if writer.transport.is_closing():  # hung up by the daemon (stopping): no socket to poll
        return
    sock = writer.get_extra_info("socket")
    poller = select.poll()
    if sock is not None:
        poller.register(sock.fileno(), select.POLLHUP)
    while conn.in_flight() and not writer.transport.is_closing():
        # A half-closed socket still reads; POLLHUP means the peer closed both ways.
        if sock is not None and any(ev & select.POLLHUP for _, ev in poller.poll(0)):
            return
        await asyncio.sleep(0.2)
