"""The bench as a PNG: one horizontal bar per method and precision (evaluations/s), labelled
with the value, the preparation time and the size; methods that could not run are listed in
grey without a bar."""

from __future__ import annotations

from pathlib import Path

from katapool.bench.result import BenchReport, BenchRow

LOG_SCALE_RATIO = 30.0  # fastest / slowest above this: a log axis keeps slow bars visible
# One colour per kind of method, so a glance separates engine, ONNX Runtime and TensorRT.
_COLOURS = {"katago": "#4c72b0", "onnxruntime": "#55a868", "tensorrt": "#c44e52"}
_GREY = "#9a9a9a"


def _colour(row: BenchRow) -> str:
    if row.backend.startswith("onnxruntime"):
        return _COLOURS["onnxruntime"]
    if row.backend == "tensorrt":
        return _COLOURS["tensorrt"]
    return _COLOURS["katago"]


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 100:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    if size >= 1e6:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e3:.0f} kB"


def human_rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}" if rate >= 10 else f"{rate:.2f}"


def wants_log_scale(rates: list[float]) -> bool:
    """A log axis when the fastest row is over LOG_SCALE_RATIO times the slowest."""
    return bool(rates) and max(rates) / min(rates) > LOG_SCALE_RATIO


def plot_bench(report: BenchReport, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = report.rows
    measured = [r.evals_per_second for r in rows if r.evals_per_second]
    log = wants_log_scale(measured)
    height = 1.6 + 0.42 * max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(11, height))
    positions = list(range(len(rows)))[::-1]  # first row on top
    top = max(measured) if measured else 1.0
    low = min(measured) if measured else 1.0
    if log:
        ax.set_xscale("log")
        left, right = low / 3, top * 60  # room on the right for the labels
    else:
        left, right = 0.0, top * 1.9
    ax.set_xlim(left, right)
    anchor = left * 1.15 if log else top * 0.01
    for y, row in zip(positions, rows, strict=True):
        if row.evals_per_second:
            ax.barh(y, row.evals_per_second - (left if log else 0), left=left if log else 0,
                    height=0.62, color=_colour(row))
            text = (f"{human_rate(row.evals_per_second)} evals/s  ·  prep "
                    f"{human_seconds(row.preparation_seconds)}  ·  {human_size(row.size_bytes)}")
            x = row.evals_per_second * (1.12 if log else 1.0) + (0 if log else top * 0.015)
            ax.text(x, y, text, va="center", ha="left", fontsize=8.5)
        else:
            word = "unavailable" if row.status == "unavailable" else "failed"
            reason = row.note.removeprefix("unavailable: ").removeprefix("engine failed: ")
            reason = reason if len(reason) <= 110 else reason[:109] + "…"
            ax.text(anchor, y, f"{word}: {reason}", va="center", ha="left", fontsize=8,
                    color=_GREY, style="italic")
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(positions)
    ax.set_yticklabels([r.label for r in rows], fontsize=9)
    for tick, row in zip(ax.get_yticklabels(), rows, strict=True):
        if not row.evals_per_second:
            tick.set_color(_GREY)
    batch = rows[0].batch if rows else 0
    ax.set_xlabel(f"network evaluations per second, batch {batch}"
                  + (" (log scale)" if log else "") + " — higher is better")
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    kinds = {("katago" if not r.backend.startswith("onnxruntime") and r.backend != "tensorrt"
              else "onnxruntime" if r.backend.startswith("onnxruntime") else "tensorrt")
             for r in rows if r.evals_per_second}
    names = {"katago": "KataGo engine", "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}
    handles = [Patch(color=_COLOURS[k], label=names[k]) for k in ("katago", "onnxruntime", "tensorrt")
               if k in kinds]
    if handles:
        ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(handles),
                  fontsize=8, frameon=False, borderaxespad=0.2)
    net = report.network.get("name", "network")
    ax.set_title(f"{net} — performance by deployment method\n{report.machine_line()}, "
                 f"{report.date[:10]}", fontsize=11, loc="left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
