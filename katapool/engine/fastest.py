"""``katapool engine install --fastest``: the fastest engine this machine can get without
compiling, and why it is that one (bin/demo's choice on a fresh machine).

KaTrain's wheel comes first in every case: PyPI is reachable where little else is, and it
carries the network the other engines lack. On a machine without a GPU its OpenCL engine runs
on PoCL, so KataGo's Eigen release (Linux x86-64, from GitHub) replaces it as the default
where github.com answers."""

from __future__ import annotations

import platform
import urllib.error
import urllib.request
from dataclasses import dataclass

from rich.console import Console

from katapool.engine import install
from katapool.engine.advice import MEASURED, on_cpu_only
from katapool.engine.backend import Backend
from katapool.engine.build_source import DEFAULT_VERSION
from katapool.engine.manifest import EngineRecord
from katapool.errors import InstallError

PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Choice:
    record: EngineRecord
    why: str


def eigen_asset(version: str) -> str:
    """KataGo's Linux Eigen release zip: its AVX2 build where the CPU has AVX2 and FMA."""
    from katapool.engine.build import cpu_flags

    avx2 = {"avx2", "fma"} <= cpu_flags()
    default = install.release_asset(version, Backend.EIGEN)
    return default.replace("-eigen-", "-eigenavx2-") if avx2 else default


def release_reachable(version: str, asset: str) -> str | None:
    """None when KataGo's release asset answers; else why not."""
    url = f"{install.RELEASE_BASE_URL}/v{version}/{asset}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=PROBE_TIMEOUT):
            return None
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return f"github.com is out of reach ({getattr(exc, 'reason', exc)})"


def install_fastest(console: Console) -> Choice:
    katrain = install.install_from_katrain(console)
    if not on_cpu_only(katrain):
        return Choice(katrain, "KaTrain's OpenCL engine reaches a GPU here")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return Choice(katrain, "no GPU, and KataGo publishes no Eigen build for this CPU: "
                      "`katapool engine build --backend eigen` compiles a faster one")
    asset = eigen_asset(DEFAULT_VERSION)
    why_not = release_reachable(DEFAULT_VERSION, asset)
    if why_not is None:
        try:
            eigen = install.install_from_release(console, DEFAULT_VERSION, Backend.EIGEN,
                                                 asset=asset)
        except InstallError as exc:
            why_not = str(exc)
        else:
            return Choice(eigen, "no GPU: KataGo's Eigen release computes on the CPU much faster "
                          f"than OpenCL through PoCL (Eigen was {MEASURED}); network: KaTrain's")
    return Choice(katrain, f"no GPU, but KataGo's Eigen release cannot be had ({why_not}): "
                  "KaTrain's OpenCL engine, on the CPU through PoCL; `katapool engine build "
                  "--backend eigen` compiles a faster one")
