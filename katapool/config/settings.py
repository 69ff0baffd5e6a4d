"""A typed model of the KataGo settings katapool writes, and its ``.cfg`` rendering.

Every value is validated before it reaches the engine: numeric ranges, enums, and no line
break, ``=`` or ``#`` smuggled into a string (KataGo's config reader would split or truncate
the line and silently read something else).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from katapool.engine.backend import Backend
from katapool.errors import ConfigError


class Mode(StrEnum):
    ANALYSIS = "analysis"
    GTP = "gtp"


# KataGo's config-key prefix per backend (setup.cpp); Eigen has no device keys.
BACKEND_PREFIX = {
    Backend.CUDA: "cuda",
    Backend.TENSORRT: "trt",
    Backend.OPENCL: "opencl",
    Backend.METAL: "metal",
}

_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def check_cfg_string(value: str) -> str:
    if any(c in value for c in "\r\n"):
        raise ValueError("must not contain a line break")
    if "=" in value:
        raise ValueError("must not contain '='")
    if "#" in value:
        raise ValueError("must not contain '#' (KataGo reads it as a comment)")
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    if not value:
        raise ValueError("must not be empty")
    return value


CfgString = Annotated[str, AfterValidator(check_cfg_string)]

WinrateView = Literal["BLACK", "WHITE", "SIDETOMOVE"]
Rules = Literal[
    "tromp-taylor", "chinese", "chinese-ogs", "chinese-kgs", "japanese", "korean",
    "stone-scoring", "aga", "bga", "new-zealand", "aga-button",
]


class KataGoSettings(BaseModel):
    """The settings of one engine process; :meth:`render` gives its ``.cfg`` text."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    mode: Mode
    backend: Backend

    # Logging and shared data.
    logDir: CfgString
    logToStderr: bool = False
    logSearchInfo: bool = False
    logAllGTPCommunication: bool = False
    homeDataDir: CfgString

    # Neural net and devices.
    devices: list[Annotated[int, Field(ge=0, le=1023)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=64,
        description="device index for each NN server thread",
    )
    useFP16: bool | Literal["auto"] = "auto"
    eigenThreads: int | None = Field(default=None, ge=1, le=1024)
    nnMaxBatchSize: int = Field(ge=1, le=4096)
    nnCacheSizePowerOfTwo: int = Field(ge=4, le=32)
    nnMutexPoolSizePowerOfTwo: int = Field(default=14, ge=4, le=24)
    openclTunerFile: CfgString | None = None

    # Search.
    maxVisits: int | None = Field(default=None, ge=1, le=10**9)
    maxTime: float | None = Field(default=None, gt=0, le=10**6)
    numSearchThreads: int = Field(default=1, ge=1, le=4096)
    numAnalysisThreads: int = Field(default=1, ge=1, le=4096)
    numSearchThreadsPerAnalysisThread: int = Field(default=1, ge=1, le=4096)
    reportAnalysisWinratesAs: WinrateView = "BLACK"
    rules: Rules = "chinese"
    ponderingEnabled: bool = False
    allowResignation: bool = False
    resignThreshold: float = Field(default=-0.9, ge=-1.0, le=0.0)
    resignConsecTurns: int = Field(default=3, ge=1, le=1000)

    extra: dict[str, CfgString] = Field(
        default_factory=dict, description="further KataGo keys, written verbatim"
    )

    @field_validator("extra")
    @classmethod
    def _extra_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _KEY_RE.match(key):
                raise ValueError(f"invalid KataGo key {key!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KataGoSettings:
        if self.openclTunerFile is not None and self.backend is not Backend.OPENCL:
            raise ValueError("openclTunerFile only applies to the OpenCL backend")
        if self.backend is Backend.EIGEN and self.useFP16 is True:
            raise ValueError("useFP16 cannot be true on the Eigen (CPU) backend")
        return self

    def items(self) -> list[tuple[str, str]]:
        """The ``key = value`` pairs, in a stable, commented order."""
        out: list[tuple[str, str]] = [
            ("logDir", self.logDir),
            ("logToStderr", _b(self.logToStderr)),
            ("logSearchInfo", _b(self.logSearchInfo)),
            ("homeDataDir", self.homeDataDir),
        ]
        if self.mode is Mode.GTP:
            out += [
                ("logAllGTPCommunication", _b(self.logAllGTPCommunication)),
                ("rules", self.rules),
                ("allowResignation", _b(self.allowResignation)),
                ("resignThreshold", _f(self.resignThreshold)),
                ("resignConsecTurns", str(self.resignConsecTurns)),
                ("ponderingEnabled", _b(self.ponderingEnabled)),
                ("numSearchThreads", str(self.numSearchThreads)),
            ]
        else:
            out += [
                ("reportAnalysisWinratesAs", self.reportAnalysisWinratesAs),
                ("numAnalysisThreads", str(self.numAnalysisThreads)),
                ("numSearchThreadsPerAnalysisThread", str(self.numSearchThreadsPerAnalysisThread)),
            ]
        if self.maxVisits is not None:
            out.append(("maxVisits", str(self.maxVisits)))
        if self.maxTime is not None:
            out.append(("maxTime", _f(self.maxTime)))
        out += [
            ("nnMaxBatchSize", str(self.nnMaxBatchSize)),
            ("nnCacheSizePowerOfTwo", str(self.nnCacheSizePowerOfTwo)),
            ("nnMutexPoolSizePowerOfTwo", str(self.nnMutexPoolSizePowerOfTwo)),
        ]
        out += self._device_items()
        # An explicit `--set` wins over katapool's value for the same key: KataGo rejects a
        # config that names a key twice.
        out = [(k, v) for k, v in out if k not in self.extra]
        out += list(self.extra.items())
        return out

    def _device_items(self) -> list[tuple[str, str]]:
        if self.backend is Backend.EIGEN:
            threads = self.eigenThreads or len(self.devices)
            return [("numEigenThreadsPerModel", str(threads))]
        prefix = BACKEND_PREFIX.get(self.backend)
        if prefix is None:
            return [("numNNServerThreadsPerModel", str(len(self.devices)))]
        items = [("numNNServerThreadsPerModel", str(len(self.devices)))]
        items += [(f"{prefix}DeviceToUseThread{i}", str(d)) for i, d in enumerate(self.devices)]
        fp16 = self.useFP16 if isinstance(self.useFP16, str) else _b(self.useFP16)
        items.append((f"{prefix}UseFP16", fp16))
        if self.openclTunerFile:
            items.append(("openclTunerFile", self.openclTunerFile))
        return items

    def render(self, header: str = "") -> str:
        lines = [f"# {ln}" if ln else "#" for ln in header.splitlines()]
        lines += [f"{k} = {v}" for k, v in self.items()]
        return "\n".join(lines) + "\n"


def _b(value: bool) -> str:
    return "true" if value else "false"


def _f(value: float) -> str:
    return repr(float(value))


def settings_error(exc: ValidationError) -> ConfigError:
    """One readable line per problem: ``key: reason (got value)``."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        got = err.get("input")
        got_text = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        problems.append(f"{where}: {err['msg']}{got_text}")
    return ConfigError("invalid KataGo setting: " + "; ".join(problems))
