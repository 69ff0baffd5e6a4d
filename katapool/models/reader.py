"""Low-level reading of KataGo model files: a whitespace-separated token stream whose float
arrays are either decimal text (``.txt``) or ``@BIN@`` + little-endian float32 (``.bin``),
optionally gzipped. There are no length prefixes: the grammar (``desc.py``) says what comes.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from katapool.errors import ModelError

_SPACE = b" \t\r\n\v\f"


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
    if not name.endswith((".gz", ".bin", ".txt")):
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
