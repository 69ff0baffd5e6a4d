"""Where a daemon keeps its socket, pidfile, token and logs."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from katapool import paths

SOCKET_PATH_MAX = 100  # sockaddr_un holds 108 bytes; keep room


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def default(cls) -> StateDir:
        return cls(paths.data_dir() / "daemon")

    @property
    def pidfile(self) -> Path:
        return self.root / "katapool.pid"

    @property
    def token_file(self) -> Path:
        return self.root / "token"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def socket(self) -> Path:
        """The default Unix socket; a short path under /tmp when the state dir is too deep
        for a socket address."""
        path = self.root / "katapool.sock"
        if len(str(path)) <= SOCKET_PATH_MAX:
            return path
        digest = hashlib.blake2b(str(self.root).encode(), digest_size=6).hexdigest()
        return Path("/tmp") / f"katapool-{os.getuid()}" / f"{digest}.sock"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs.mkdir(parents=True, exist_ok=True)


def read_or_create_token(path: Path) -> str:
    """The token remote clients must present; made on first start, readable by its owner only."""
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid
