"""Networks: read KataGo model files (versions 3–17) and describe them.

The names below are loaded on first use: ``katapool.models.reader``'s header check runs on the
protocol commands' start-up path, which must not pay for numpy (``desc``, ``summary``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from katapool.models.desc import ModelDesc, load_model
    from katapool.models.summary import parameter_count, summarize

__all__ = ["ModelDesc", "load_model", "parameter_count", "summarize"]
_HOME = {"ModelDesc": "desc", "load_model": "desc", "parameter_count": "summary",
         "summarize": "summary"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
