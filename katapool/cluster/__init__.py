"""Pool members on a Ray cluster (the optional ``katapool[ray]`` extra).

The router stays in the daemon (the Ray driver); each member is a Ray actor that owns one
native engine on the node Ray placed it on. Nothing here imports Ray at module load: users
without the extra see no change, and a clear error when they ask for a cluster.
"""

from __future__ import annotations

from types import ModuleType

from katapool.errors import KatapoolError

CPU_RESOURCE = "katapool_cpu"  # what a node declares per CPU member it hosts
NAMESPACE = "katapool"


class RayMissingError(KatapoolError):
    """``--ray`` was asked for without the Ray extra installed."""


def require_ray() -> ModuleType:
    """Import Ray, or explain which extra brings it."""
    try:
        import ray
    except ImportError:
        raise RayMissingError("this needs Ray: pip install 'katapool[ray]'") from None
    return ray
