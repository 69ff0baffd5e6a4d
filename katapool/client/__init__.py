"""Python client for katapool: analyse positions and games through a daemon
(:func:`connect`) or a pool embedded in your process (:meth:`Client.embedded`).

>>> # from katapool.client import Client, Position
>>> # with Client.connect() as client:
>>> #     result = client.analyze(Position.from_moves(["Q16", "D4"]), visits=100)
"""

from pathlib import Path

from katapool.client.async_client import (
    ActionTimeout,
    AnalysisStream,
    AnalysisTimeout,
    AsyncClient,
    QueryError,
)
from katapool.client.position import Position, handicap_stones
from katapool.client.results import Analysis, MoveInfo, QueryWarning, RootInfo
from katapool.client.sync_client import Client, SyncAnalysisStream
from katapool.client.transport import ConnectionLost


def connect(address: str | None = None, *, token: str | None = None,
            token_file: str | Path | None = None) -> Client:
    """A blocking client connected to a daemon (see :meth:`Client.connect`)."""
    return Client.connect(address, token=token, token_file=token_file)


__all__ = ["ActionTimeout", "Analysis", "AnalysisStream", "AnalysisTimeout", "AsyncClient", "Client",
           "ConnectionLost", "MoveInfo", "Position", "QueryError", "QueryWarning", "RootInfo",
           "SyncAnalysisStream", "connect", "handicap_stones"]
