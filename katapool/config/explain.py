"""``config generate --explain``: each sized value, where it came from and why."""

from __future__ import annotations

from typing import Any

from katapool.config.build import BuiltConfig


def explain_text(built: BuiltConfig) -> str:
    lines: list[str] = []
    for origin in built.origins:
        value = str(origin.value).lower() if isinstance(origin.value, bool) else origin.value
        lines.append(f"{origin.setting} = {value}  [{origin.source}]  {origin.why}")
        lines += [f"    {ln}" for ln in figure_lines(origin.figures)]
    if built.profile is not None:
        p = built.profile
        opts = ", ".join(f"{k} {v}" for k, v in p.options.items())
        lines.append(f"profile: {built.profile_file} (measured {p.measured_at:%Y-%m-%d %H:%M} "
                     f"UTC in {p.seconds:.0f} s by katapool {p.katapool_version}; {opts})")
    elif built.profile_file is not None:
        lines.append(f"profile: none at {built.profile_file} (measure with "
                     "`katapool prepare --measure`)")
    else:
        lines.append("profile: none applies (profiles are per single device and network)")
    lines += [f"note: {n}" for n in built.notes]
    return "\n".join(lines) + "\n"


def figure_lines(figures: dict[str, Any]) -> list[str]:
    """Measured figures, one line for the scalars and one per candidate."""
    scalars = {k: v for k, v in figures.items() if not isinstance(v, dict)}
    out = []
    if scalars:
        out.append("measured: " + ", ".join(f"{k}={_fmt(v)}" for k, v in scalars.items()))
    for key, value in figures.items():
        if key == "candidates" and isinstance(value, dict):
            for name, row in value.items():
                cells = ", ".join(f"{k}={_fmt(v)}" for k, v in row.items())
                out.append(f"candidate {name}: {cells}")
        elif isinstance(value, dict):
            out.append(f"{key}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
