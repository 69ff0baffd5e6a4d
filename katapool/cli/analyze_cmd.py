"""``katapool analyze GAMES...``: review games through a pool; tables, annotated SGFs, graphs."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from katapool.cli.common import err, out, parse_gpus
from katapool.client.async_client import AsyncClient
from katapool.client.transport import EmbeddedChannel
from katapool.errors import ConfigError
from katapool.game.record import GameRecord, load_sgf
from katapool.review.annotate import write_annotated
from katapool.review.batch import GameReview, review_games


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("analyze", aliases=["review"],
                       help="review games (SGF): tables, annotated SGFs, graphs",
                       description="Analyse every position of the given games through a pool "
                                   "(embedded, or a running daemon with --connect).")
    p.add_argument("games", nargs="+", type=Path, metavar="GAME.sgf")
    p.add_argument("--visits", type=int, default=16, help="visits per position (default 16)")
    p.add_argument("-o", "--out", type=Path, default=Path("katapool-analysis"),
                   help="folder for annotated SGFs and graphs (default ./katapool-analysis)")
    p.add_argument("--plot", action="store_true", help="also write a PNG winrate/score graph per game")
    p.add_argument("--json", action="store_true", help="one JSON object per game on stdout")
    p.add_argument("--mistake", type=float, default=0.10,
                   help="winrate loss that marks a mistake (default 0.10; twice that: a blunder)")
    p.add_argument("--top", type=int, default=5, help="mistakes listed per game (default 5)")
    p.add_argument("--brief", action="store_true", help="no per-move table: summary and mistakes")
    p.add_argument("--connect", metavar="ADDRESS", nargs="?", const="",
                   help="use a running daemon (default address: the local one)")
    p.add_argument("--token-file", type=Path, metavar="FILE", help="file holding the daemon's "
                   "token, for a WebSocket address (default: $KATAPOOL_TOKEN)")
    p.add_argument("--token", help="the token itself (others can read a command line: prefer "
                   "--token-file or $KATAPOOL_TOKEN)")
    p.add_argument("--members", type=int, default=1, help="engine processes (embedded pool)")
    p.add_argument("--gpus", help="GPU indices, one member each (embedded pool)")
    p.add_argument("--preset", default="desktop")
    p.add_argument("--katago", metavar="PATH", help="KataGo binary")
    p.add_argument("--model", metavar="FILE", help="network (embedded pool); with --connect, "
                   "the name of one of the daemon's models")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.visits < 1:
        raise ConfigError(f"--visits must be at least 1 (got {args.visits})")
    if not 0 < args.mistake < 1:
        raise ConfigError(f"--mistake is a winrate loss between 0 and 1 (got {args.mistake})")
    games: list[tuple[Path, GameRecord]] = [(path, load_sgf(path)) for path in args.games]
    stems = [p.stem for p, _ in games]
    if len(set(stems)) != len(stems):  # two games with one name must not overwrite each other
        stems = [f"{i + 1:02d}-{s}" for i, s in enumerate(stems)]
    for (path, _), stem in zip(games, stems, strict=True):
        if (args.out / f"{stem}.sgf").resolve() == path.resolve():
            raise ConfigError(f"-o {args.out} would overwrite {path} with its annotated copy: "
                              "choose another output folder")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install matplotlib") from None
    reviews = asyncio.run(_run(args, games))
    failed = 0
    for stem, review in zip(stems, reviews, strict=True):
        if review.error is not None:
            failed += 1
            err.print(f"[bold red]error:[/] {review.source}: {review.error}", soft_wrap=True)
            continue
        sgf_out = write_annotated(review, args.out / f"{stem}.sgf", args.mistake, args.visits)
        png_out = None
        if args.plot:
            from katapool.review.plot import plot_game

            png_out = plot_game(review, args.out / f"{stem}.png", args.mistake, args.visits)
        if args.json:
            out.out(json.dumps(_as_json(review, args, sgf_out, png_out)))
        else:
            _print_game(review, args, sgf_out, png_out)
    return 1 if failed else 0


async def _run(args: argparse.Namespace, games: list[tuple[Path, GameRecord]]) -> list[GameReview]:
    total = sum(len(r.moves) + 1 for _, r in games)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=args.json) as progress:
        task = progress.add_task("starting the pool", total=total)
        if args.connect is not None:
            client = await AsyncClient.connect(args.connect or None, token=args.token,
                                               token_file=args.token_file)
        else:
            gpus = parse_gpus(args.gpus)
            from katapool.pool import Pool

            pool = Pool.embedded(args.model, members=args.members, gpus=gpus, preset=args.preset,
                                 katago=args.katago, batch=True)
            client = AsyncClient(EmbeddedChannel(pool, own=True))
            await client.open()
        try:
            progress.update(task, description=f"{len(games)} game(s), {args.visits} visits/position")
            model = args.model if args.connect is not None else None
            return await review_games(client, games, args.visits,
                                      lambda: progress.advance(task), model=model)
        finally:
            await client.close()


def _as_json(review: GameReview, args: argparse.Namespace, sgf_out: Path,
             png_out: Path | None) -> dict[str, Any]:
    record = review.record
    return {
        "game": str(review.source), "black": record.black, "white": record.white,
        "result": record.result, "visits": args.visits, "sgf": str(sgf_out),
        "png": str(png_out) if png_out else None,
        "moves": [{"move": m.number, "player": m.player, "vertex": m.move,
                   "winrateBlack": round(m.after.winrate_black, 4),
                   "scoreLeadBlack": round(m.after.score_lead_black, 2),
                   "winrateLoss": round(m.winrate_loss, 4), "scoreLoss": round(m.score_loss, 2),
                   "mistake": m.winrate_loss >= args.mistake,
                   "bestMove": m.before.best_move} for m in review.moves],
        "mistakes": [{"move": m.number, "player": m.player, "vertex": m.move,
                      "winrateLoss": round(m.winrate_loss, 4), "bestMove": m.before.best_move}
                     for m in review.mistakes(args.mistake, args.top)],
    }


def _print_game(review: GameReview, args: argparse.Namespace, sgf_out: Path,
                png_out: Path | None) -> None:
    record = review.record
    title = f"{record.black} (B) vs {record.white} (W)" + (f", {record.result}" if record.result else "")
    if not args.brief:
        table = Table(title=f"{review.source.name}: {title}",
                      caption=f"{args.visits} visits per position; winrate and score from Black's view")
        for col in ("move", "", "played", "B winrate", "B score", "loss", "engine's choice"):
            table.add_column(col, justify="right" if col in ("move", "B winrate", "B score", "loss")
                             else "left")
        for m in review.moves:
            flag = ""
            if m.winrate_loss >= 2 * args.mistake:
                flag = " [red]??[/]"
            elif m.winrate_loss >= args.mistake:
                flag = " [yellow]?[/]"
            table.add_row(str(m.number), m.player, m.move, f"{m.after.winrate_black:6.1%}",
                          f"{m.after.score_lead_black:+6.1f}", f"{m.winrate_loss:+.1%}{flag}",
                          m.before.best_move or "")
        out.print(table)
    else:
        out.print(f"[bold]{review.source.name}[/]: {title}")
    worst = review.mistakes(args.mistake, args.top)
    if worst:
        out.print("  biggest mistakes: " + ", ".join(
            f"{m.number}.{m.player} {m.move} (−{m.winrate_loss:.0%}"
            + (f", best {m.before.best_move})" if m.before.best_move else ")") for m in worst))
    else:
        out.print(f"  no move lost {args.mistake:.0%} winrate or more")
    out.print(f"  annotated SGF: {sgf_out}" + (f"   graph: {png_out}" if png_out else ""))
