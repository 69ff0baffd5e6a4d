"""The engine-side half of checking a mobile export: the engine's own evaluations of real
positions (from the user's games, or from quick self-play when none are given), made once and
compared with any runner (LiteRT for TFLite; ONNX Runtime replaying a Core ML program)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from katapool.errors import ConfigError
from katapool.models.desc import ModelDesc
from katapool.models.validate import Position, Sample, engine_reference, with_explicit_rules


@dataclass(frozen=True)
class EngineSetup:
    katago: Path
    config: Path
    version: str


@contextmanager
def engine_setup(katago: str | None, network: Path) -> Iterator[EngineSetup]:
    """The engine and a GTP config for ``network`` in a temporary directory."""
    from katapool.config.build import build_config
    from katapool.config.settings import Mode
    from katapool.engine.discovery import resolve_engine
    from katapool.engine.probe import probe_version

    info = probe_version(resolve_engine(katago).path)
    with tempfile.TemporaryDirectory(prefix="katapool-check-") as tmp:
        cfg = Path(tmp) / "gtp.cfg"
        cfg.write_text(build_config(mode=Mode.GTP, info=info, model=network, preset="desktop").text)
        yield EngineSetup(info.path, cfg, info.version)


def check_positions(setup: EngineSetup, model: ModelDesc, games: list[Path], count: int,
                    board: int, workdir: Path, seed: int = 7,
                    on_move: Callable[[], None] | None = None,
                    exclude: set[tuple[str, int]] | None = None) -> list[Position]:
    """``count`` positions of ``board`` size: from ``games`` when given, else from quick
    self-play games of the network itself (up to 100 moves each, one game per 40 positions)."""
    from katapool.models.precision_check import _sample
    from katapool.models.validate import sample_positions

    if games:
        copies = with_explicit_rules(games, workdir)
    else:
        from katapool.models.selfplay import selfplay_games

        games_needed = max(1, -(-count // 40))
        copies = selfplay_games(setup.katago, setup.config, model.source.path, games_needed,
                                moves=min(100, board * board // 3 + 20, max(40, 2 * count)),
                                board=board,
                                workdir=workdir, seed=seed, on_move=on_move)
    if exclude:
        pool = [p for p in sample_positions(copies, 10**9, seed)
                if p.size == board and (str(p.sgf), p.moves) not in exclude]
        if len(pool) < count:
            raise ConfigError(f"the games hold {len(pool)} usable {board}x{board} positions "
                              f"outside the calibration set, {count} are needed")
        return sorted(pool[:count], key=lambda p: (str(p.sgf), p.moves))
    return _sample(copies, count, board, seed)


def engine_samples(setup: EngineSetup, model: ModelDesc, positions: list[Position],
                   on_position: Callable[[], None] | None = None) -> list[Sample]:
    return engine_reference(model, setup.katago, setup.config, positions, on_position)


def writable_output(path: Path) -> None:
    """Fail before any work when ``path`` cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.exists() and path.is_dir() and path.suffix not in (".mlpackage",):
        raise ConfigError(f"{path} is a directory")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"cannot write {path}: {probe} is a file, where a folder is needed")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: {probe} is not a writable directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"cannot write {path}: permission denied")


def output_file(path: Path, suffix: str | tuple[str, ...], kind: str,
                inputs: tuple[Path | None, ...] = ()) -> None:
    """Fail before any work when ``path`` is no place for the new ``kind`` file: a name
    without ``suffix`` (one of them; ``-o net.bin.gz`` would put a graph where a network is
    looked for), one of the command's own inputs (overwritten before it is compared with), or
    a place that cannot be written."""
    suffixes = (suffix,) if isinstance(suffix, str) else suffix
    if not path.name.lower().endswith(suffixes):
        raise ConfigError(f"-o {path}: {kind} is written to a file named "
                          + " or ".join(f"*{s}" for s in suffixes))
    for given in inputs:
        if given is not None and path.exists() and given.exists() and path.samefile(given):
            raise ConfigError(f"-o {path} is the input file: write the new file elsewhere")
    writable_output(path)


def umask() -> int:
    """The process's file-creation mask: Linux shows it; elsewhere it is read by setting it
    (for an instant, which other threads creating files could see)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_modes(root: Path) -> None:
    """Modes a plainly created file or folder would have (rw-r--r-- under the usual umask):
    temporary files and folders are made owner-only, and a renamed one keeps that."""
    mask = umask()
    root.chmod(0o777 & ~mask if root.is_dir() else 0o666 & ~mask)
    if root.is_dir():
        for sub in root.rglob("*"):
            if not sub.is_symlink():
                sub.chmod(0o777 & ~mask if sub.is_dir() else 0o666 & ~mask)


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all, with the modes of an ordinary new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
