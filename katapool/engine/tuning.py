"""OpenCL tuning files: the tuner's reference parameters, and the record of prepared files.

A tuning file holds only kernel parameters for a device, so a file tuned with one network
serves every network on that device. KataGo's own tuner starts from a reference (untuned)
parameter set; written as a file (format ``VERSION=13``, ``cpp/neuralnet/opencltuner.cpp``)
it lets the engine start at once, untuned, while a full tune can run later.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from katapool import paths
from katapool.errors import ConfigError

log = logging.getLogger(__name__)

TUNER_FORMAT_VERSION = 13

_FP16_FLAGS = [
    "canUseFP16Storage", "canUseFP16Compute", "canUseFP16TensorCores", "canUseFP16TensorCoresFor1x1",
    "shouldUseFP16Storage", "shouldUseFP16Compute", "shouldUseFP16TensorCores",
    "shouldUseFP16TensorCoresFor1x1",
]
_XGEMM = {"MWG": 8, "NWG": 8, "KWG": 8, "MDIMC": 1, "NDIMC": 1, "MDIMA": 1, "NDIMB": 1, "KWI": 1,
          "VWM": 1, "VWN": 1, "STRM": 0, "STRN": 0, "SA": 0, "SB": 0}
_WINOGRAD_LOCAL = {"transLocalSize0": 1, "transLocalSize1": 1, "untransLocalSize0": 1,
                   "untransLocalSize1": 1, "untransLocalSize2": 1}
# The kernel sections in file order, each with the tuner's untuned reference values.
REFERENCE_SECTIONS: list[tuple[str, dict[str, int]]] = [
    ("xGemmDirect", {"WGD": 8, "MDIMCD": 1, "NDIMCD": 1, "MDIMAD": 1, "NDIMBD": 1, "KWID": 1,
                     "VWMD": 1, "VWND": 1, "PADA": 1, "PADB": 1}),
    ("xGemm", _XGEMM),
    ("xGemm16", _XGEMM),
    ("hGemmWmma", {"MWG": 16, "NWG": 16, "KWG": 16, "MWAVE": 16, "NWAVE": 16, "MWARP": 16,
                   "NWARP": 16, "VWM": 2, "VWN": 2, "SA": 0, "SB": 0}),
    ("hGemmWmmaNCHW", {"MWG": 16, "NWG": 16, "KWG": 16, "MWAVE": 16, "NWAVE": 16, "MWARP": 16,
                       "NWARP": 16, "VWM": 1, "VWN": 2, "SB": 0, "PAD_ELTS_PER_THREAD": 1,
                       "PAD_ROWS_PER_THREAD": 1}),
    ("conv3x3", {"INTILE_XSIZE": 4, "INTILE_YSIZE": 4, "OUTTILE_XSIZE": 2, "OUTTILE_YSIZE": 2,
                 **_WINOGRAD_LOCAL}),
    ("conv5x5", {"INTILE_XSIZE": 6, "INTILE_YSIZE": 6, "OUTTILE_XSIZE": 2, "OUTTILE_YSIZE": 2,
                 **_WINOGRAD_LOCAL}),
    ("gPool", {"XYSTRIDE": 1, "CHANNELSTRIDE": 1, "BATCHSTRIDE": 1}),
    ("transformer", {"ATTN_BLOCK_Q": 32, "ATTN_BLOCK_KV": 32, "Q_PER_THREAD": 1, "USE_TILED_ATTN": 1}),
    ("transformerRMSNorm", {"WG_C_SIZE": 64, "WG_XY_SIZE": 1, "C_PER_THREAD": 4}),
    ("pointWise", {"ELTS_PER_THREAD": 1, "LOCAL_SIZE": 32}),
    ("addChannelBiasesNCHW", {"XY_ELTS_PER_THREAD": 1, "NC_ELTS_PER_THREAD": 1}),
    ("spatialRMSNorm", {"TILE_SIZE": 32, "APPLY_ELTS_PER_THREAD": 1}),
]


def reference_tuning_text() -> str:
    """A complete, valid tuning file holding the tuner's reference (untuned) parameters."""
    lines = [f"VERSION={TUNER_FORMAT_VERSION}"]
    for flag in _FP16_FLAGS:
        lines += [f"#{flag}", "0"]
    for name, params in REFERENCE_SECTIONS:
        lines += [f"#{name}", " ".join(f"{k}={v}" for k, v in params.items())]
    return "\n".join(lines) + "\n"


def tuning_file_version(path: Path) -> int | None:
    """The format version a tuning file declares, or None if it is not a tuning file."""
    try:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                m = re.fullmatch(r"VERSION=(\d+)", line)
                return int(m.group(1)) if m else None
    except OSError:
        return None
    return None


def tuning_file_complete(path: Path) -> bool:
    """Whether ``path`` is a whole tuning file of the format katapool prepares: every section
    with its values. KataGo aborts at start on one cut short ("unexpected number of parameter
    lines"), so such a file must never be handed to it."""
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError):
        return False
    if not lines or lines[0] != f"VERSION={TUNER_FORMAT_VERSION}":
        return False
    expected = [f"#{flag}" for flag in _FP16_FLAGS] + [f"#{name}" for name, _ in REFERENCE_SECTIONS]
    sections = lines[1::2]
    values = lines[2::2]
    return sections == expected and len(values) == len(expected) \
        and not any(v.startswith("#") for v in values)


def write_atomically(target: Path, text: str) -> None:
    """Readers (an engine starting) see the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # not mkstemp's 0600: services of other users read them
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_writable(folder: Path, what: str) -> None:
    """Fail now, with the folder named, rather than after minutes of tuning or measuring
    whose result could not be kept."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                       None)
        why = f"{blocker} is a file" if blocker else exc.strerror or str(exc)
        raise ConfigError(f"cannot keep {what} in {folder} ({why}): set KATAPOOL_DATA_DIR "
                          "to a writable place") from None


def install_tuning_file(source: Path, target: Path) -> None:
    """Put a finished tune in place atomically (the tuner writes into scratch space, often
    another filesystem, where a move is a copy that a full disk or a kill can cut short)."""
    write_atomically(target, source.read_text())


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80] or "device"


TuningKind = Literal["reference", "full"]


class TuningEntry(BaseModel):
    device_name: str
    engine_version: str
    format_version: int = TUNER_FORMAT_VERSION
    kind: TuningKind
    file: Path
    board_size: int = 19
    model: str | None = None
    seconds: float = 0.0
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))


class TuningIndex(BaseModel):
    entries: list[TuningEntry] = []

    def best(self, device_name: str, engine_version: str) -> TuningEntry | None:
        """A full tune beats the reference parameters; a missing or damaged file counts as
        absent."""
        found = [e for e in self.entries
                 if _same_device(e, device_name) and e.engine_version == engine_version
                 and e.format_version == TUNER_FORMAT_VERSION and tuning_file_complete(e.file)]
        found.sort(key=lambda e: (e.kind == "full", e.board_size == 19, e.created))
        return found[-1] if found else None

    def damaged(self, device_name: str, engine_version: str) -> list[Path]:
        """Recorded tuning files for this device that are there but cut short."""
        return [e.file for e in self.entries
                if _same_device(e, device_name) and e.engine_version == engine_version
                and e.format_version == TUNER_FORMAT_VERSION and e.file.is_file()
                and not tuning_file_complete(e.file)]

    def add(self, entry: TuningEntry) -> None:
        self.entries = [e for e in self.entries
                        if not (e.device_name == entry.device_name
                                and e.engine_version == entry.engine_version
                                and e.kind == entry.kind and e.board_size == entry.board_size)]
        self.entries.append(entry)


def index_path() -> Path:
    return paths.tuning_dir() / "index.json"


def _same_device(entry: TuningEntry, device_name: str) -> bool:
    # By the name the tuning file is kept under: an entry rebuilt from the file (see
    # _rebuild_from_files) knows the device only by that.
    return entry.device_name == device_name or safe_name(entry.device_name) == safe_name(device_name)


def tuning_file_name(device_name: str, engine_version: str, board_size: int) -> str:
    return f"{safe_name(device_name)}-katago{engine_version}-x{board_size}.txt"


_TUNED_FILE = re.compile(r"^(?P<device>.+?)-katago(?P<version>\d.*)-x(?P<board>\d+)\.txt$")


def _rebuild_from_files(folder: Path) -> TuningIndex:
    """An index of the full tunes in ``folder`` that are whole (see
    :func:`tuning_file_complete`): a damaged index must not cost minutes of re-tuning for
    files still there, nor hand a damaged file to the engine."""
    index = TuningIndex()
    with contextlib.suppress(OSError):
        for path in sorted(folder.iterdir()):
            m = _TUNED_FILE.match(path.name)
            if m is None or not tuning_file_complete(path):
                continue
            index.add(TuningEntry(
                device_name=m["device"], engine_version=m["version"], kind="full", file=path,
                board_size=int(m["board"]),
                created=datetime.fromtimestamp(path.stat().st_mtime, UTC)))
    return index


def _read_index(path: Path) -> TuningIndex | None:
    """The index at ``path`` (empty if there is none), or None if it cannot be read."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return TuningIndex()
    except OSError:
        return None
    try:
        return TuningIndex.model_validate_json(text)
    except ValueError:
        return None


def _recover(path: Path) -> TuningIndex:
    """Rebuild an unreadable index from the files on disk; called under the index lock. The
    damaged file is kept beside it (``index.json.damaged``) for a look; if the new index
    cannot be written, the next reader rebuilds it again."""
    index = _rebuild_from_files(path.parent)
    kept = path.with_name(path.name + ".damaged")
    try:
        shutil.copyfile(path, kept)
    except OSError:
        kept_note = ""
    else:
        kept_note = f"; the damaged one is kept as {kept}"
    with contextlib.suppress(OSError):
        _write_index(index)
    log.warning("katapool: the OpenCL tuning index %s could not be read; rebuilt it from the "
                "%d complete tuning file(s) in %s%s", path, len(index.entries), path.parent,
                kept_note)
    return index


def load_index() -> TuningIndex:
    path = index_path()
    index = _read_index(path)
    if index is not None:
        return index
    with _index_lock(path):  # one process rebuilds it; the others read what it wrote
        index = _read_index(path)
        return index if index is not None else _recover(path)


@contextlib.contextmanager
def _index_lock(path: Path) -> Iterator[None]:
    try:
        lock = open(path.with_suffix(".lock"), "w")  # noqa: SIM115 (held for the block)
    except OSError:  # a folder katapool cannot write: nothing to guard
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_index(index: TuningIndex) -> None:
    write_atomically(index_path(), index.model_dump_json(indent=2))


def record_entry(entry: TuningEntry) -> None:
    """Add one entry to the index on disk: re-read under an exclusive lock, so concurrent
    `prepare` and `config generate` runs never drop each other's entries."""
    path = index_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _index_lock(path):
        index = _read_index(path)
        if index is None:
            index = _recover(path)
        index.add(entry)
        _write_index(index)


def write_reference_file(device_name: str, engine_version: str) -> TuningEntry:
    target = paths.tuning_dir() / f"reference-v{TUNER_FORMAT_VERSION}.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    text = reference_tuning_text()
    if not target.exists() or target.read_text() != text:
        write_atomically(target, text)
    return TuningEntry(device_name=device_name, engine_version=engine_version,
                       kind="reference", file=target)


def json_summary(entry: TuningEntry) -> str:
    return json.dumps({"kind": entry.kind, "file": str(entry.file), "device": entry.device_name})
