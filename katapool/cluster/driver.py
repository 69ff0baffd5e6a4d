"""The daemon as a Ray driver: joining the cluster and building a model's Ray members."""

from __future__ import annotations

import logging
import time
from typing import Any

from katapool.cluster import NAMESPACE, require_ray
from katapool.cluster.member import Placement, RayMember
from katapool.cluster.recipe import MemberRecipe
from katapool.config.poolfile import ModelSpec, PoolFile
from katapool.errors import KatapoolError
from katapool.pool.supervisor import MemberFactory

log = logging.getLogger(__name__)


def connect(address: str, wait: float = 120.0) -> dict[str, Any]:
    """Join the cluster at ``address`` ('auto': the one this machine belongs to) as its
    driver (blocking), trying again for up to ``wait`` seconds: a daemon started beside its
    head (a pod's second container, a service started at boot) may be up first. Ray's
    workers' output is not relayed: stdout stays katapool's."""
    ray = require_ray()
    if ray.is_initialized():
        return dict(ray.cluster_resources())
    deadline = time.monotonic() + wait
    while True:
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
            break
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if time.monotonic() > deadline:
                raise KatapoolError(f"cannot join the Ray cluster at {address}: {first}") from None
            log.warning("the Ray cluster at %s is not reachable yet (%s); trying again", address,
                        first)
            time.sleep(2.0)
    resources = dict(ray.cluster_resources())
    log.info("joined the Ray cluster at %s: %s", address, resources)
    return resources


def disconnect() -> None:
    ray = require_ray()
    if ray.is_initialized():
        ray.shutdown()


def _kv(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def recipe_for(spec: ModelSpec, file: PoolFile, batch: bool = False) -> MemberRecipe:
    """Paths stay as written: they are resolved on the node that runs the member."""
    return MemberRecipe(katago=file.engine, model=spec.path, human_model=spec.human_model,
                        configs=tuple(spec.configs),
                        overrides=tuple(f"{k}={_kv(v)}" for k, v in spec.overrides.items()),
                        analysis_threads=spec.analysis_threads, preset=spec.preset, batch=batch,
                        start_timeout=file.policy.start_timeout)


def placement_for(spec: ModelSpec) -> Placement:
    resources = dict(spec.resources)
    gpus = resources.pop("GPU", 0.0)
    return Placement(gpus=gpus, resources=resources, strategy=spec.placement)


def ray_factories(name: str, spec: ModelSpec, file: PoolFile) -> list[MemberFactory]:
    """One factory per member of ``spec``; each call makes a new actor (a restart)."""
    recipe, placement = recipe_for(spec, file), placement_for(spec)

    def make(slot: int, generation: int) -> RayMember:
        return RayMember(f"{name}-member-{slot}", recipe, placement)

    return [make] * spec.member_count()
