"""Where a daemon keeps its socket, pidfile, token and logs."""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import psutil

from katapool import paths
from katapool.errors import KatapoolError

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

    def current_socket(self) -> Path:
        """The socket a running daemon reported (``<root>/socket``), else the default."""
        try:
            return Path((self.root / "socket").read_text().strip())
        except OSError:
            return self.socket

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs.mkdir(parents=True, exist_ok=True)


def private_dir(path: Path) -> Path:
    """Create ``path`` (0700) or check that an existing one is ours and private: a socket in a
    directory someone else controls could be swapped for theirs."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise KatapoolError(f"{path} must be a directory owned by you with mode 0700 "
                            "(it holds the daemon's socket)")
    return path


TOKEN_ENV = "KATAPOOL_TOKEN"


def read_token_file(path: Path) -> str:
    """The token in ``path``; refused, as ssh refuses such a key, when the file is not private
    to its owner (anyone who can read it can use the daemon)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KatapoolError(f"token file {path} does not exist") from None
    except OSError as exc:
        raise KatapoolError(f"cannot read token file {path}: {exc.strerror}") from None
    with os.fdopen(fd) as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KatapoolError(f"token file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KatapoolError(f"token file {path} has permissions {stat.S_IMODE(info.st_mode):04o}, "
                                f"readable by others: it must be private to you (chmod 600 {path})")
        return check_token(fh.read().strip(), f"token file {path}")


def check_token(token: str, source: str) -> str:
    if not token:
        raise KatapoolError(f"{source} is empty")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise KatapoolError(f"{source}: a token is one word of printable ASCII characters")
    return token


def read_or_create_token(path: Path) -> str:
    """The token remote clients must present; made on first start, readable by its owner only."""
    if path.exists() and path.stat().st_size > 0:
        return read_token_file(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise KatapoolError(f"cannot write token file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, 0o600)  # an empty file left with other permissions
        fh.write(token + "\n")
    return token


def daemon_token(token_file: Path | None, default: Path) -> str:
    """The daemon's token: the named token file (``--token-file`` or ``listen.token_file``),
    else ``$KATAPOOL_TOKEN``, else the state directory's token file, made if missing."""
    if token_file is not None:
        return read_or_create_token(token_file)
    from_env = os.environ.get(TOKEN_ENV)
    if from_env:
        return check_token(from_env.strip(), f"${TOKEN_ENV}")
    return read_or_create_token(default)


def read_pid(pidfile: Path) -> int | None:
    """The daemon's pid if the pidfile names a live katapool process (a stale file whose pid
    now belongs to something else does not count)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if "katapool" not in " ".join(proc.cmdline()):
            return None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return pid
    return pid


class PidLock:
    """The pidfile, held locked while the daemon runs: two daemons can never share a state
    directory, even when started at the same moment."""

    def __init__(self, pidfile: Path) -> None:
        self.pidfile = pidfile
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.pidfile, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            self.pidfile.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
