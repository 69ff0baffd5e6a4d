"""The KataGo source a build compiles: a checkout, a tarball, or a pinned release tarball
downloaded from GitHub and checked against its sha256."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from katapool import paths
from katapool.engine.download import download, sha256_of, verify_sha256
from katapool.errors import InstallError

SOURCE_BASE_URL = "https://github.com/lightvector/KataGo/archive/refs/tags"
# sha256 of GitHub's tag tarball per version. 1.17.2's was computed from the copy of it this
# project holds (shared/engine-src/KataGo-1.17.2.tar.gz), taken to be GitHub's.
PINNED_SOURCES = {
    "1.17.2": "d3216cc8d9f5eb049fb5e8678eb581c5056661e04d45436f320b401d52158573",
}
DEFAULT_VERSION = "1.17.2"

_PROJECT_RE = re.compile(r"^\s*project\(\s*katago\b", re.MULTILINE | re.IGNORECASE)
_VERSION_RE = re.compile(r'getKataGoVersion\(\)\s*\{\s*return\s+string\("([^"]+)"\)')


@dataclass(frozen=True)
class SourceTree:
    """A KataGo checkout: ``root`` holds ``cpp/CMakeLists.txt``."""

    root: Path
    version: str | None  # from cpp/main.cpp
    sha256: str | None  # of the tarball it was unpacked from
    origin: str  # what the user named: a directory, a tarball, a URL

    @property
    def cpp(self) -> Path:
        return self.root / "cpp"

    def has_git_revision(self) -> bool:
        """Whether CMake can embed a git revision (it runs `git describe` in the tree)."""
        if not (self.root / ".git").exists():
            return False
        try:
            return subprocess.run(["git", "-C", str(self.root), "rev-parse", "HEAD"],
                                  capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def check_tree(root: Path, origin: str, sha256: str | None = None) -> SourceTree:
    """``root`` (or its ``cpp`` directory) as a KataGo source tree, or one clear error."""
    if root.name == "cpp" and (root / "CMakeLists.txt").is_file():
        root = root.parent
    cmakelists = root / "cpp" / "CMakeLists.txt"
    try:
        text = cmakelists.read_text(errors="replace")
    except OSError:
        text = ""
    if not _PROJECT_RE.search(text):
        raise InstallError(f"{origin} is not a KataGo source tree: it has no cpp/CMakeLists.txt "
                           "declaring project(katago)")
    try:
        found = _VERSION_RE.search((root / "cpp" / "main.cpp").read_text(errors="replace"))
    except OSError:
        found = None
    return SourceTree(root.absolute(), found.group(1) if found else None, sha256, origin)


def unpack(archive: Path, dest: Path, origin: str, sha256: str | None = None) -> SourceTree:
    """Unpack a source tarball (GitHub's: one top directory) into ``dest``."""
    digest = sha256 or sha256_of(archive)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # refuses links and paths leaving dest
    except tarfile.ReadError:
        raise InstallError(f"{origin} is not a tar archive (a KataGo source tarball, "
                           "e.g. v1.17.2.tar.gz from GitHub)") from None
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise InstallError(f"could not unpack {origin}: {exc}") from None
    entries = [p for p in dest.iterdir()]
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
    return check_tree(root, origin, digest)


def source_url(version: str, base_url: str | None = None) -> str:
    base = (base_url or os.environ.get("KATAPOOL_SOURCE_BASE_URL") or SOURCE_BASE_URL).rstrip("/")
    return f"{base}/v{version}.tar.gz"


def fetch_source(console: Console, version: str, sha256: str | None = None,
                 base_url: str | None = None) -> tuple[Path, str]:
    """KataGo ``version``'s source tarball (cached in the downloads directory and re-verified on
    every use); its sha256 is the pinned one unless ``sha256`` is given."""
    version = version.lstrip("v")
    expected = sha256 or PINNED_SOURCES.get(version)
    if expected is None:
        pinned = ", ".join(sorted(PINNED_SOURCES))
        raise InstallError(f"KataGo {version}'s source is not pinned here (pinned: {pinned}): "
                           f"pass --sha256 of v{version}.tar.gz, or --source FILE")
    cached = paths.downloads_dir() / f"KataGo-{version}.tar.gz"
    if cached.exists():
        try:
            return cached, verify_sha256(cached, expected)
        except InstallError:
            cached.unlink()  # a stale or corrupt copy: fetch it again
    got = download(source_url(version, base_url), cached, console)  # atomic: no partial file
    try:
        return got, verify_sha256(got, expected)
    except InstallError:
        got.unlink(missing_ok=True)
        raise
