"""Downloads with a progress bar and sha256 verification."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from katapool.errors import ChecksumError, InstallError

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> str:
    actual = sha256_of(path)
    if actual.lower() != expected.lower():
        raise ChecksumError(
            f"sha256 mismatch for {path.name}: expected {expected}, got {actual} "
            f"(corrupt or tampered download)"
        )
    return actual


def download(url: str, dest: Path, console: Console, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` through a temporary file; no partial file survives a failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=console,
                transient=not console.is_terminal,
            ) as progress:
                task = progress.add_task(f"downloading {dest.name}", total=total)
                for block in iter(lambda: resp.read(CHUNK), b""):
                    out.write(block)
                    progress.advance(task, len(block))
        os.replace(tmp, dest)
        return dest
    except urllib.error.HTTPError as exc:
        raise InstallError(f"download failed: {url} answered HTTP {exc.code}") from None
    except ValueError as exc:
        raise InstallError(f"bad download URL {url!r}: {exc}") from None
    except http.client.HTTPException as exc:
        raise InstallError(f"download failed: {url}: {exc.__class__.__name__} (truncated?)") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InstallError(f"download failed: {url}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)
