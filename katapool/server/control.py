"""Talk to a running daemon over its Unix socket (for `katapool status`, `stop`, `reload`)."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from typing import Any

from katapool.errors import KatapoolError


class DaemonNotRunning(KatapoolError):
    pass


def request(socket_path: Path, action: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
    """Send one control action and return the daemon's answer (an ``error`` raises)."""
    rid = f"ctl-{uuid.uuid4().hex[:8]}"
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonNotRunning(f"no katapool daemon is listening on {socket_path} "
                               "(start one with `katapool start`)") from None
    with sock:
        sock.sendall(json.dumps({"id": rid, "action": action, **fields}).encode() + b"\n")
        buf = b""
        try:
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise KatapoolError(f"the daemon closed the connection before answering {action}")
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if msg.get("id") != rid:
                        continue
                    if "error" in msg:
                        raise KatapoolError(f"daemon: {msg['error']}")
                    return dict(msg)
        except TimeoutError:
            raise KatapoolError(f"the daemon did not answer {action} within {timeout:g} s") from None
