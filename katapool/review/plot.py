"""A PNG per game: Black's winrate and score lead over the moves, mistakes marked."""

from __future__ import annotations

from pathlib import Path

from katapool.review.batch import GameReview
from katapool.review.output import write_whole


def _short(name: str, width: int = 36) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def plot_game(review: GameReview, out: Path, mistake: float, depth: str,
              label_top: int = 6) -> Path:
    """``depth`` says how deep the positions were searched (e.g. "2 visits per position")."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    evals = review.evaluations
    turns = [e.turn for e in evals]
    winrate = [100 * e.winrate_black for e in evals]
    lead = [e.score_lead_black for e in evals]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    record = review.record
    fig.suptitle(f"{_short(record.black)} (B) vs {_short(record.white)} (W)"
                 + (f" — {record.result}" if record.result else "")
                 + f"\n{review.source.name}, {depth}", fontsize=11)
    top.fill_between(turns, winrate, 50, where=[w >= 50 for w in winrate], color="#333333",
                     alpha=0.25, interpolate=True, linewidth=0)
    top.fill_between(turns, winrate, 50, where=[w < 50 for w in winrate], color="#bbbbbb",
                     alpha=0.45, interpolate=True, linewidth=0)
    top.plot(turns, winrate, color="black", linewidth=1.2)
    top.axhline(50, color="grey", linewidth=0.6, linestyle="--")
    top.set_ylim(0, 100)
    top.set_ylabel("Black winrate %")
    labelled = {m.number for m in review.mistakes(mistake, top=label_top)}
    for m in review.moves:
        if review.severity(m, mistake):
            colour = "#d62728" if m.player == "B" else "#1f77b4"
            top.plot(m.number, 100 * m.after.winrate_black, "o", color=colour, markersize=4)
            if m.number in labelled:  # only the biggest: labels on every dot would be noise
                top.annotate(f"{m.number}.{m.move}", (m.number, 100 * m.after.winrate_black),
                             textcoords="offset points", xytext=(3, 6), fontsize=7, color=colour)
    bottom.bar(turns, lead, color=["#333333" if v >= 0 else "#aaaaaa" for v in lead], width=1.0)
    bottom.axhline(0, color="grey", linewidth=0.6)
    bottom.set_ylabel("Black score lead")
    bottom.set_xlabel("move")
    bottom.set_xlim(0, max(1, *turns))  # a game without moves is one point: no 0..0 axis
    handles = [Line2D([], [], marker="o", linestyle="", color="#d62728", label="Black mistake"),
               Line2D([], [], marker="o", linestyle="", color="#1f77b4", label="White mistake")]
    top.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8,
               frameon=False, borderaxespad=0.2)
    fig.tight_layout()
    try:
        return write_whole(out, lambda fh: fig.savefig(fh, format="png", dpi=110))
    finally:
        plt.close(fig)
