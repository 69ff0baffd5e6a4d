"""``katapool.yaml``: what a daemon serves (models, members, endpoints, limits).

Errors name the file and line of the offending value, so a typo in a 40-line file is found
at once. Without a file, :func:`default_pool_file` builds one from the devices found.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from katapool.config.overrides import check_override
from katapool.config.policy import PoolPolicy
from katapool.config.settings import Mode
from katapool.errors import ConfigError

DEFAULT_WS_PORT = 6364


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """One network served by its own members; queries pick it with ``"model": NAME``."""

    path: str | None = Field(default=None, description="network file; default: the engine's bundled one")
    human_model: str | None = None
    gpus: list[int] | None = Field(default=None, description="one member per listed GPU")
    members: int | None = Field(default=None, ge=1, le=64, description="engine processes "
                                "(default: one per listed GPU, else 1)")
    preset: str = "server"
    configs: list[str] = Field(default_factory=list, description="your own KataGo configs "
                               "instead of generated ones")
    overrides: dict[str, str | int | float | bool] = Field(default_factory=dict)
    analysis_threads: int | None = Field(default=None, ge=1)
    # On a Ray cluster (`katapool start --ray`): where the members go and what each asks for.
    placement: Literal["spread", "pack"] = Field(default="spread", description="on a Ray "
                                                 "cluster: members on as many nodes as "
                                                 "possible, or filling one node first")
    resources: dict[str, float] = Field(default_factory=lambda: {"GPU": 1.0}, description=(
        "on a Ray cluster: what each member asks Ray for; GPU members {GPU: 1}, CPU members "
        "{katapool_cpu: 1} (declared by `katapool ray worker`), plus any custom resource"))

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, float]) -> dict[str, float]:
        for key, amount in value.items():
            if not key or amount < 0:
                raise ValueError(f"resources: {key!r} needs a name and an amount of 0 or more")
        if value.get("GPU", 0) > 1:
            raise ValueError("resources: a member drives one GPU (GPU at most 1); use more members")
        return value

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Checked like katapool's own configs, and rendered as KataGo reads them: they go to
        ``-override-config key=value,...`` (members run KataGo's analysis engine)."""
        out = {}
        for key, raw in value.items():
            try:
                out[key] = check_override(key, raw, Mode.ANALYSIS)
            except ValueError as exc:
                raise PydanticCustomError("override", "{message}",
                                          {"key": key, "message": str(exc)}) from None
        return out

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(g < 0 for g in value):
            raise ValueError("GPU indices are 0 or more")
        return value

    def member_count(self) -> int:
        return self.members or (len(self.gpus) if self.gpus else 1)


class Listen(_Strict):
    unix: str = Field(default="default", description="Unix socket path, or 'default' for "
                      "katapool's own (always on: it is also the control channel)")
    websocket: str | None = Field(default=None, description="host:port for WebSocket, "
                                  "/healthz and /metrics (e.g. 127.0.0.1:6364)")
    token_file: str | None = Field(default=None, description="default: <state dir>/token")
    require_token: bool | None = Field(default=None, description="default: only when the "
                                       "WebSocket endpoint is bound beyond loopback")
    origins: list[str] = Field(default_factory=list, description="web page origins allowed "
                               "to open the WebSocket (e.g. https://my-gui.example); programs "
                               "without an Origin header are always allowed")
    hosts: list[str] = Field(default_factory=list, description="Host names, besides "
                             "localhost and loopback addresses, by which clients may reach a "
                             "daemon that needs no token (require_token: false beyond loopback)")

    @field_validator("websocket")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            split_address(value)
        return value

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return [normal_origin(v) for v in value]

    def exposure_warning(self) -> str | None:
        """Why this endpoint is open to every program on the network, or None. The Host check
        stops browsers only: any other program can send ``Host: localhost``."""
        if self.websocket is None or self.require_token is not False:
            return None
        host, port = split_address(self.websocket)
        if is_loopback(host):
            return None
        return (f"listen.websocket {self.websocket} with require_token: false: any program "
                f"that reaches port {port} on this machine's network can use the pool (the Host "
                "check only stops web browsers); remove require_token: false to require the "
                "token")


def normal_origin(value: str) -> str:
    """An Origin as a browser sends it (``scheme://host[:port]``, lower case, no default port,
    no path): an entry with a trailing slash or a path would never match and silently lock
    its page out."""
    parts = urlsplit(value.strip())
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"origin {value!r} is not scheme://host[:port] "
                         "(e.g. https://my-gui.example)")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"origin {value!r} has more than scheme://host[:port]: browsers send "
                         f"{parts.scheme.lower()}://{parts.netloc.lower()} (no path or "
                         "trailing slash)")
    scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return f"{scheme}://{netloc}"


def split_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    """``localhost`` (``localhost.``) or a loopback address: names no other site can hold.
    ``127.0.0.1.evil.example`` is not an address, so it is someone else's name."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Limits(_Strict):
    max_queue: int = Field(default=10_000, ge=1, description="queries in the pool before refusing")
    max_visits: int | None = Field(default=None, ge=1, description="largest maxVisits a query may ask")
    per_client_concurrency: int = Field(default=1_000, ge=1, description="queries one connection "
                                        "may have in flight")
    max_line_bytes: int = Field(default=4 << 20, ge=1024, description="longest query line")
    max_connections: int = Field(default=256, ge=1, description="clients connected at once "
                                 "(Unix socket and WebSocket together); one more gets an error "
                                 "and is closed (the daemon's own controls still pass)")
    max_unread_bytes: int = Field(default=64 << 20, ge=65536, description="answers held for "
                                  "one client that does not read them; past it that client is "
                                  "disconnected")


class PoolFile(_Strict):
    engine: str | None = Field(default=None, description="KataGo binary; default: the installed one")
    models: dict[str, ModelSpec] = Field(default_factory=lambda: {"main": ModelSpec()})
    default_model: str | None = None
    listen: Listen = Field(default_factory=Listen)
    limits: Limits = Field(default_factory=Limits)
    log_dir: str | None = Field(default=None, description="default: <state dir>/logs")
    policy: PoolPolicy = Field(default_factory=PoolPolicy)
    ray: str | None = Field(default=None, description="run the members on this Ray cluster "
                            "(head address HOST:PORT, or 'auto' for the one this machine is "
                            "part of); needs katapool[ray]")

    @field_validator("ray")
    @classmethod
    def _ray_address(cls, value: str | None) -> str | None:
        """'auto' or the head's HOST:PORT: a typo fails at once, not after the join retries."""
        if value is not None and value != "auto":
            split_address(value)
        return value

    @model_validator(mode="after")
    def _models(self) -> PoolFile:
        if not self.models:
            raise ValueError("models: at least one model is needed")
        for name in self.models:
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"model name {name!r}: use letters, digits, '-', '_' or '.'")
        if self.ray is not None:
            for name, spec in self.models.items():
                if spec.gpus is not None:
                    raise ValueError(f"models.{name}.gpus: on a Ray cluster Ray assigns the "
                                     "GPUs; give members (and resources) instead")
        if self.default_model is None:
            self.default_model = next(iter(self.models))
        elif self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models "
                             f"({', '.join(self.models)})")
        return self


def default_pool_file(gpus: list[int] | None = None) -> PoolFile:
    """What ``katapool start`` serves without a file: the default network, one member per
    GPU asked for (or one on the best device found)."""
    return PoolFile(models={"main": ModelSpec(gpus=gpus)})


def load_pool_file(path: Path) -> PoolFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_pool_file(text, str(path))


_KATAGO_LINE = re.compile(r"^\s*[A-Za-z][A-Za-z0-9_]*\s*=", re.MULTILINE)


def parse_pool_file(text: str, source: str = "katapool.yaml") -> PoolFile:
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if node is None:
        data: Any = {}
        lines: dict[tuple[Any, ...], int] = {}
    else:
        data = yaml.safe_load(text)
        lines = {}
        _index_lines(node, (), lines)
    if not isinstance(data, dict):
        hint = ""
        if _KATAGO_LINE.search(text):  # `katago -config` habits: the wrong kind of file
            hint = ("; this looks like a KataGo config (key = value): a pool file is YAML and "
                    "names KataGo configs under models.NAME.configs (docs/daemon.md)")
        raise ConfigError(f"{source}:1: expected a mapping of settings at the top{hint}")
    try:
        return PoolFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        if first["type"] == "override":  # the offending key's own line
            loc = (*loc, first.get("ctx", {})["key"])
        line = _nearest_line(loc, lines)
        path = ".".join(str(p) for p in loc) or "(top)"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown setting"
        raise ConfigError(f"{source}:{line}: {path}: {message}" if line else
                          f"{source}: {path}: {message}") from None


def _index_lines(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, key.value)
            lines[child] = key.start_mark.line + 1
            _index_lines_children(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), lines)


def _index_lines_children(node: yaml.Node, path: tuple[Any, ...],
                          lines: dict[tuple[Any, ...], int]) -> None:
    keep = lines[path]
    _index_lines(node, path, lines)
    lines[path] = keep  # a key's own line is where a reader looks for it


def _nearest_line(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for end in range(len(loc), -1, -1):
        key = tuple(str(p) if isinstance(p, str) else p for p in loc[:end])
        if key in lines:
            return lines[key]
    return None
