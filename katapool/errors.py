"""katapool's error hierarchy.

Every error a user can cause or fix carries a one-line, specific message; the CLI prints
that line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class KatapoolError(Exception):
    """Base of every error katapool raises on purpose. ``fix``: the command that repairs it,
    where one does (`katapool doctor` shows it beside the problem)."""

    exit_code = 1

    def __init__(self, *args: object, fix: str | None = None) -> None:
        super().__init__(*args)
        self.fix = fix


class EngineNotFoundError(KatapoolError):
    """No KataGo binary could be found (flag, environment, manifest, PATH)."""


class EngineStartError(KatapoolError):
    """The KataGo binary exists but would not start or run; the message holds the diagnosis.
    ``exited``: the engine ran and quit on its own before it was ready (it said why), rather
    than failing to spawn or to answer in time."""

    def __init__(self, message: str, *, exited: bool = False, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.exited = exited


class EngineError(KatapoolError):
    """The engine misbehaved or rejected a request."""


class EngineTerminatedError(EngineError):
    """A running engine process died."""


class InstallError(KatapoolError):
    """Engine installation failed; nothing half-installed is left behind."""


class ChecksumError(InstallError):
    """A downloaded file does not match its expected sha256."""


class ConfigError(KatapoolError):
    """A KataGo or katapool setting is invalid."""

    exit_code = 2


class ModelError(KatapoolError):
    """A network file is missing or unreadable."""


class GameRecordError(KatapoolError):
    """A game record (SGF) cannot be read or holds an illegal move."""
