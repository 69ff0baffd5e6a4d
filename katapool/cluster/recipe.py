"""What a node needs to build one member on its own devices.

Only names and settings travel: the engine, networks, device discovery and the generated
config are resolved on the node that owns the device, so OpenCL numbering and TensorRT
caches stay local to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MemberRecipe:
    katago: str | None = None  # the node's installed engine when None
    model: str | None = None  # a path on the node, or None for the engine's bundled network
    human_model: str | None = None
    configs: tuple[str, ...] = ()  # the user's own KataGo configs (paths on the node)
    overrides: tuple[str, ...] = ()
    analysis_threads: int | None = None
    preset: str = "server"
    batch: bool = False
    start_timeout: float = 900.0
    env: dict[str, str] = field(default_factory=dict)
