"""Where katapool keeps its files.

One data directory holds installed engines, the shared KataGo ``homeDataDir`` (OpenCL tuning,
TensorRT caches) and prepared tuning files, so every process and app reuses the same work.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """``$KATAPOOL_DATA_DIR``, else ``$XDG_DATA_HOME/katapool``, else ``~/.local/share/katapool``."""
    explicit = os.environ.get("KATAPOOL_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return (base / "katapool").resolve()


def cache_dir() -> Path:
    """``$KATAPOOL_CACHE_DIR``, else ``$XDG_CACHE_HOME/katapool``, else ``~/.cache/katapool``."""
    explicit = os.environ.get("KATAPOOL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "katapool").resolve()


def engines_dir() -> Path:
    return data_dir() / "engines"


def manifest_path() -> Path:
    return engines_dir() / "manifest.json"


def models_dir() -> Path:
    return data_dir() / "models"


def katago_home() -> Path:
    """The ``homeDataDir`` every generated config shares (tuning files, TensorRT caches)."""
    return data_dir() / "katago-home"


def tuning_dir() -> Path:
    return data_dir() / "tuning"


def profiles_dir() -> Path:
    """Measured per-device settings (``katapool prepare --measure``)."""
    return tuning_dir() / "profiles"


def logs_dir() -> Path:
    """katapool's own logs (engine builds), kept after the command that wrote them."""
    return data_dir() / "logs"


def builds_dir() -> Path:
    """Scratch trees of engine builds (removed when a build ends)."""
    return cache_dir() / "builds"


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


def run_dir() -> Path:
    """Scratch space for generated configs of running engines (created on demand)."""
    path = data_dir() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path
