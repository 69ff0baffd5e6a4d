"""Low-level reading of KataGo model files: a whitespace-separated token stream whose float
arrays are either decimal text (``.txt``) or ``@BIN@`` + little-endian float32 (``.bin``),
optionally gzipped. There are no length prefixes: the grammar (``desc.py``) says what comes.

numpy is imported only to read float arrays: the header check (:func:`check_network_file`) runs
on the start-up path of the protocol commands, which do without it.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from katapool.errors import ModelError

if TYPE_CHECKING:
    import numpy as np

_SPACE = b" \t\r\n\v\f"
EXTENSIONS = (".bin.gz", ".bin", ".txt.gz", ".txt", ".gz")  # what KataGo loads
HEADER_BYTES = 1 << 12  # far more than a header's few short tokens
GZIP_MAGIC = b"\x1f\x8b"
OLDEST_VERSION = 3  # KataGo loads no older network


@dataclass(frozen=True)
class ModelFile:
    path: Path
    data: bytes  # uncompressed
    binary: bool  # float arrays as @BIN@ blocks
    sha256: str  # of the file as stored (what KataGo hashes)
    size: int  # bytes as stored


def open_model_file(path: Path) -> ModelFile:
    """Read ``.bin.gz``, ``.bin``, ``.txt.gz`` or ``.txt`` (other ``.gz``: binary, else text)."""
    name = path.name.lower()
    if not name.endswith(EXTENSIONS):
        raise ModelError(f"{path}: a KataGo model ends in .bin.gz, .bin, .txt.gz or .txt")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from None
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ModelError(f"{path}: not a readable gzip file ({exc})") from None
    else:
        data = raw
    stem = name.removesuffix(".gz")
    binary = stem.endswith(".bin") or (not stem.endswith(".txt") and b"@BIN@" in data[:1 << 20])
    return ModelFile(path, data, binary, hashlib.sha256(raw).hexdigest(), len(raw))


class TokenReader:
    def __init__(self, model: ModelFile) -> None:
        self.data = model.data
        self.binary = model.binary
        self.pos = 0
        self.source = str(model.path)
        self.floats_read = 0

    def _fail(self, what: str) -> ModelError:
        return ModelError(f"{self.source}: {what} (at byte {self.pos}); the file is corrupt, "
                          "truncated or not a KataGo model")

    def token(self, what: str = "a token") -> str:
        data, n = self.data, len(self.data)
        pos = self.pos
        while pos < n and data[pos] in _SPACE:
            pos += 1
        end = pos
        while end < n and data[end] not in _SPACE:
            end += 1
        if end == pos:
            self.pos = pos
            raise self._fail(f"expected {what}, found the end of the file")
        self.pos = end
        return data[pos:end].decode("ascii", errors="replace")

    def integer(self, what: str) -> int:
        text = self.token(what)
        try:
            return int(text)
        except ValueError:
            raise self._fail(f"expected {what} (an integer), found {text[:40]!r}") from None

    def number(self, what: str) -> float:
        text = self.token(what)
        try:
            return float(text)
        except ValueError:
            raise self._fail(f"expected {what} (a number), found {text[:40]!r}") from None

    def floats(self, count: int, what: str) -> np.ndarray:
        import numpy as np

        if count < 0:
            raise self._fail(f"{what}: negative size")
        if self.binary:
            at = self.data.find(b"@", self.pos, self.pos + 101)
            if at < 0 or self.data[at:at + 5] != b"@BIN@":
                raise self._fail(f"{what}: no @BIN@ float block where one belongs")
            start = at + 5
            end = start + 4 * count
            if end > len(self.data):
                raise self._fail(f"{what}: the float block is cut short")
            values = np.frombuffer(self.data, dtype="<f4", count=count, offset=start).astype(np.float32)
            self.pos = end
        else:
            values = np.array([self.number(what) for _ in range(count)], dtype=np.float32)
        if not np.isfinite(values).all():
            raise self._fail(f"{what}: a weight is not finite (NaN or infinity)")
        self.floats_read += count
        return values

    def at_end(self) -> bool:
        rest = self.data[self.pos:]
        return not rest.strip(_SPACE)


@dataclass(frozen=True)
class NetworkHeader:
    name: str
    version: int
    spatial_inputs: int
    global_inputs: int


def read_header(r: TokenReader) -> NetworkHeader:
    """The tokens every network starts with: name, model version, input channel counts."""
    name = r.token("the model name")
    if not name.isascii() or not name.isprintable():
        raise r._fail("it starts with binary data, not a network's name")
    version = r.integer("the model version")
    if version < OLDEST_VERSION:
        raise r._fail(f"model version {version} (KataGo reads {OLDEST_VERSION} and later)")
    spatial, global_ = r.integer("spatial input channels"), r.integer("global input channels")
    if spatial <= 0 or global_ <= 0:
        raise r._fail(f"bad input channel counts {spatial}, {global_}")
    return NetworkHeader(name, version, spatial, global_)


def check_network_file(path: Path) -> NetworkHeader:
    """A cheap check that ``path`` is a network KataGo can load, reading only its first bytes:
    an extension KataGo takes, gzip where it says .gz, and a network's header. Raises
    :class:`ModelError` "… is not a KataGo network: why"."""
    def refuse(why: str) -> ModelError:
        return ModelError(f"{path} is not a KataGo network: {why}")

    name = path.name.lower()
    if not name.endswith(EXTENSIONS):
        raise refuse("KataGo loads only .bin.gz, .bin, .txt.gz, .txt or .gz files")
    try:
        with open(path, "rb") as f:
            start = f.read(HEADER_BYTES)
            if not start:
                raise refuse("the file is empty")
            if name.endswith(".gz"):
                if not start.startswith(GZIP_MAGIC):
                    raise refuse("not gzip-compressed, as its name says")
                f.seek(0)
                with gzip.GzipFile(fileobj=f) as unzipped:
                    start = unzipped.read(HEADER_BYTES)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise refuse(f"not a readable gzip file ({exc or 'cut short'})") from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    binary = not name.removesuffix(".gz").endswith(".txt")
    reader = TokenReader(ModelFile(path, start, binary, sha256="", size=len(start)))
    try:
        return read_header(reader)
    except ModelError as exc:
        # The reader's own wording ends in "corrupt, truncated or not a KataGo model".
        why = str(exc).removeprefix(f"{path}: ").split(" (at byte")[0]
        raise refuse(why) from None
