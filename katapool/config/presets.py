"""Presets: how a class of deployment sizes the engine (``configs/*.yaml``)."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from katapool.config.preset_files import preset_names, presets_dir
from katapool.engine.backend import Backend
from katapool.errors import ConfigError


class GpuBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    small: int = Field(ge=1, le=4096)
    medium: int = Field(ge=1, le=4096)
    large: int = Field(ge=1, le=4096)


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    description: str
    recommended_backend: Backend | None = None
    ram_budget_fraction: float = Field(gt=0, le=0.9)
    ram_budget_max_mib: int = Field(ge=16)
    gpu_batch: GpuBatch
    search_threads_per_batch: float = Field(gt=0, le=64)
    analysis_search_threads: int = Field(ge=1, le=1024)
    settings: dict[str, Any] = Field(default_factory=dict)


def load_preset(name: str) -> Preset:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(names)})")
    path = presets_dir() / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return Preset.model_validate({**data, "name": name})
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"preset {path} is invalid: {exc}") from None
