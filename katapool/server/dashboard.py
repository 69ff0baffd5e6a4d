"""The foreground daemon's live view: one row per member."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def _where(member: dict[str, Any]) -> str:
    """Its device, and its node when that is not this machine (a pid there is not one here)."""
    device = member.get("device") or "-"
    node = member.get("node")
    return device if node in (None, "local") else f"{device} @ {node}"


def status_table(status: dict[str, Any], title: str = "katapool") -> Table:
    table = Table(title=f"{title} — up {status.get('uptime_s', 0):.0f} s, "
                        f"{status.get('connections', 0)} client(s)",
                  caption="latency: time to each final response of a member's share of a query")
    for col in ("model", "member", "device", "state", "pid", "RSS MB", "restarts", "in flight",
                "visits/s", "p50 s", "p99 s"):
        table.add_column(col, justify="right" if col not in ("model", "member", "device", "state")
                         else "left")
    for model in status.get("models", []):
        for m in model["members"]:
            state = m["state"]
            colour = {"ready": "green", "failed": "red", "draining": "yellow"}.get(state, "yellow")
            table.add_row(model["name"] + (" *" if model.get("default") else ""), m["name"],
                          _where(m), f"[{colour}]{state}[/]", _fmt(m.get("pid")),
                          _fmt(m.get("rss_mb"), ".0f"), _fmt(m.get("restarts")),
                          _fmt(m.get("in_flight")), _fmt(m.get("visits_per_s"), ".1f"),
                          _fmt(m.get("p50_s"), ".2f"), _fmt(m.get("p99_s"), ".2f"))
    return table
