"""Where the presets live and their names, without loading them: command-line help names
the presets, and a GUI's `katapool gtp` start must not pay for pydantic to print none."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def presets_dir() -> Path:
    """Installed wheels carry the presets inside the package; a checkout reads ``configs/``."""
    packaged = resources.files("katapool") / "_presets"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))
