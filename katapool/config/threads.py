"""``config generate --tune``: let ``katago benchmark`` pick the search thread count.

The result is cached per (engine binary, network, device), since a benchmark costs minutes.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

from rich.console import Console

from katapool import paths
from katapool.config.build import build_config
from katapool.config.settings import Mode
from katapool.engine.diagnose import diagnose
from katapool.engine.download import sha256_of
from katapool.engine.probe import EngineInfo
from katapool.errors import EngineStartError

_RECOMMENDED = re.compile(r"numSearchThreads\s*=\s*(\d+):.*\(recommended\)")


def parse_recommended(text: str) -> int | None:
    found = _RECOMMENDED.findall(text)
    return int(found[-1]) if found else None


def candidate_threads(base: int) -> list[int]:
    values = {max(1, base // 2), base, base * 2, max(1, (base * 3) // 2)}
    return sorted(values)


def _cache_file() -> Path:
    return paths.tuning_dir() / "threads.json"


def _load_cache() -> dict[str, int]:
    try:
        data = json.loads(_cache_file().read_text())
        return {str(k): int(v) for k, v in data.items()}
    except (OSError, ValueError):
        return {}


def tune_search_threads(info: EngineInfo, model: Path, device_spec: str, preset: str,
                        console: Console, visits: int = 200, positions: int = 4) -> int:
    built = build_config(mode=Mode.GTP, info=info, model=model, device_spec=device_spec,
                         preset=preset)
    device = built.devices[0]
    # Whatever changes the best thread count: engine build, network, device, batch size.
    key = "|".join([sha256_of(info.path.resolve())[:16], info.version, info.git_revision or "",
                    model.name, device.spec, device.name, preset,
                    str(built.settings.nnMaxBatchSize)])
    cache = _load_cache()
    if key in cache:
        console.print(f"search threads for {device.spec}: {cache[key]} (cached benchmark)")
        return cache[key]
    base = built.settings.numSearchThreads
    with tempfile.TemporaryDirectory(prefix="katapool-bench-") as tmp:
        cfg = Path(tmp) / "bench.cfg"
        cfg.write_text(built.text)
        argv = [str(info.path), "benchmark", "-config", str(cfg), "-model", str(model),
                "-v", str(visits), "-n", str(positions),
                "-t", ",".join(map(str, candidate_threads(base)))]
        with console.status(f"benchmarking search threads on {device.spec} "
                            f"({', '.join(map(str, candidate_threads(base)))})"):
            proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    best = parse_recommended(proc.stdout + proc.stderr)
    if proc.returncode != 0 or best is None:
        cause = diagnose(proc.stdout + proc.stderr, proc.returncode)
        raise EngineStartError(f"katago benchmark failed: {cause}")
    cache[key] = best
    _cache_file().parent.mkdir(parents=True, exist_ok=True)
    _cache_file().write_text(json.dumps(cache, indent=2))
    console.print(f"search threads for {device.spec}: {best} (katago benchmark)")
    return best
