"""``katapool analyze GAMES...``: review games through a pool; tables, annotated SGFs, graphs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from katapool.cli.common import err, make_folder, out
from katapool.cli.progress import ProgressReport
from katapool.cli.shared_options import add_device, add_katago, add_model, add_preset, gpu_indices
from katapool.client.async_client import AsyncClient
from katapool.client.transport import EmbeddedChannel
from katapool.errors import ConfigError, GameRecordError
from katapool.game.record import GameRecord, load_sgf
from katapool.review.annotate import write_annotated
from katapool.review.batch import DEFAULT_TRUST_VISITS, GameReview, deepen, fill_reviews, plan_checks
from katapool.review.budget import Speed, format_duration, parse_duration, plan_review
from katapool.review.words import counted


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("analyze", aliases=["review"],
                       help="review games (SGF): tables, annotated SGFs, graphs",
                       description="Analyse every position of the given games through a pool "
                                   "(embedded, or a running daemon with --connect). Mistakes are "
                                   "flagged only where the positions before and after the move "
                                   "were both searched to at least --trust-visits; the largest "
                                   "swings found at fewer visits are re-searched that deep.")
    p.add_argument("games", nargs="+", type=Path, metavar="GAME.sgf")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--visits", type=int,
                       help=f"visits per position (default {DEFAULT_VISITS})")
    depth.add_argument("--time", metavar="DURATION",
                       help="finish within this time (e.g. 5m, 90s, 1h): the engine's speed is "
                            "measured first and the visits chosen to fit")
    p.add_argument("--trust-visits", type=int, default=DEFAULT_TRUST_VISITS,
                   help="visits both positions of a move need before its loss is flagged "
                        f"(default {DEFAULT_TRUST_VISITS})")
    p.add_argument("--checks", type=int,
                   help="largest swings re-searched at --trust-visits (default: as many as "
                        "--time allows, else twice --top per game)")
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
    add_device(p, "devices, one member each (embedded pool; default: the best device found)")
    add_preset(p, "desktop", "preset for the generated configs (embedded pool)")
    add_katago(p, help="KataGo binary")
    add_model(p, "network (embedded pool; default: $KATAPOOL_MODEL or the engine's bundled "
              "one); with --connect, the name of one of the daemon's models")
    p.set_defaults(func=cmd_analyze)


DEFAULT_VISITS = 16


def _check_out_dir(folder: Path) -> None:
    """The output folder exists (made now) and takes files."""
    make_folder(folder, f"-o {folder}: cannot make the output folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"-o {folder}: the output folder is not writable")


def cmd_analyze(args: argparse.Namespace) -> int:
    started = time.monotonic()
    args.gpus = gpu_indices(args, "katapool analyze")  # a wrong kind fails before any work
    budget = None
    if args.time is not None:
        try:
            budget = parse_duration(args.time)
        except ValueError as exc:
            raise ConfigError(f"--time: {exc}") from None
    elif args.visits is None:
        args.visits = DEFAULT_VISITS
    if args.visits is not None and args.visits < 1:
        raise ConfigError(f"--visits must be at least 1 (got {args.visits})")
    if args.trust_visits < 1:
        raise ConfigError(f"--trust-visits must be at least 1 (got {args.trust_visits})")
    if args.checks is not None and args.checks < 0:
        raise ConfigError(f"--checks cannot be negative (got {args.checks})")
    if not 0 < args.mistake < 1:
        raise ConfigError(f"--mistake is a winrate loss between 0 and 1 (got {args.mistake})")
    if args.members < 1:
        raise ConfigError(f"--members must be at least 1 (got {args.members})")
    if args.top < 0:
        raise ConfigError(f"--top cannot be negative (got {args.top})")
    games, unreadable = load_games(args.games, args.json)
    if not games:
        raise ConfigError("no game to review" + (" (every file was unreadable)" if unreadable else ""))
    stems, labels = output_names([p for p, _ in games])
    for (path, _), stem in zip(games, stems, strict=True):
        if (args.out / f"{stem}.sgf").resolve() == path.resolve():
            raise ConfigError(f"-o {args.out} would overwrite {path} with its annotated copy: "
                              "choose another output folder")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install matplotlib") from None
    _check_out_dir(args.out)  # an unwritable -o must not cost a whole review first
    run = asyncio.run(_run(args, games, budget, started))
    if run.interrupted:
        return report_interrupted(run, stems, labels, args)
    failed = report_reviews(run, stems, labels, args)
    if not args.json:
        err.print(f"reviewed in {format_duration(time.monotonic() - started)}"
                  + (f" (budget {format_duration(budget)})" if budget else ""))
    return 1 if failed or unreadable else 0


INTERRUPTED_EXIT = {"SIGINT": 130, "SIGTERM": 143}  # the shells' 128 + signal number


def report_interrupted(run: ReviewRun, stems: list[str], labels: list[str],
                       args: argparse.Namespace) -> int:
    """The games whose every position was evaluated are written and reported as usual (their
    swings not yet re-searched show as unchecked); the others are named, with how far they got."""
    how = "interrupted" if run.interrupted == "SIGINT" else "stopped (SIGTERM)"
    code = INTERRUPTED_EXIT.get(run.interrupted or "", 130)
    if not any(r.evaluations for r in run.reviews):
        if args.json:  # still one object per game
            for review in run.reviews:
                out.out(json.dumps({"game": str(review.source),
                                    "error": f"{how} before it was reviewed"}))
        err.print(f"{how} before any position was reviewed: nothing written")
        return code
    for review in run.reviews:
        if review.error is None and not review.complete:
            review.error = (f"{how} after {len(review.evaluations)} of "
                            f"{counted(review.positions, 'position')}: not written")
    finished = sum(r.error is None for r in run.reviews)
    report_reviews(run, stems, labels, args)
    err.print(f"{how}: {finished} of {counted(len(run.reviews), 'game')} reviewed and written"
              + (f" to {args.out}" if finished else ""), soft_wrap=True, highlight=False)
    return code


def load_games(paths: list[Path], as_json: bool) -> tuple[list[tuple[Path, GameRecord]], int]:
    """The readable games, and how many files were not; each problem said on stderr (and, with
    --json, each unreadable file as its own object)."""
    games: list[tuple[Path, GameRecord]] = []
    unreadable = 0
    for path in paths:  # one broken file among many must not stop the others' review
        try:
            record = load_sgf(path)
        except GameRecordError as exc:
            unreadable += 1
            err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
            if as_json:  # one object per game, this one saying why it has no review
                out.out(json.dumps({"game": str(path), "error": str(exc)}))
            continue
        games.append((path, record))
        for warning in record.warnings:
            err.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True,
                      highlight=False)
    return games, unreadable


def report_reviews(run: ReviewRun, stems: list[str], labels: list[str],
                   args: argparse.Namespace) -> int:
    """Each game's outputs and report; how many games have none. A game whose files cannot be
    written (a full disk, a name taken by a folder) is reported alone: the games after it are
    still written."""
    failed = 0
    for stem, label, review in zip(stems, labels, run.reviews, strict=True):
        error = review.error
        if error is None:
            try:
                sgf_out = write_annotated(review, args.out / f"{stem}.sgf", args.mistake)
                png_out = None
                if args.plot:
                    from katapool.review.plot import plot_game

                    png_out = plot_game(review, args.out / f"{stem}.png", args.mistake,
                                        run.depth_text())
            except OSError as exc:
                error = f"cannot write its review to {exc.filename or args.out}: {exc.strerror}"
        if error is not None:
            failed += 1
            err.print(f"[bold red]error:[/] {escape(f'{review.source}: {error}')}", soft_wrap=True,
                      highlight=False)
            if args.json:
                out.out(json.dumps({"game": str(review.source), "error": error}))
            continue
        if args.json:
            out.out(json.dumps(_as_json(review, args, run, sgf_out, png_out)))
        else:
            _print_game(review, label, args, run, sgf_out, png_out)
    return failed


def output_names(paths: list[Path]) -> tuple[list[str], list[str]]:
    """Per game, the stem of its output files and the name it is shown by. Two games with one
    file name (in two folders, or differing only in case, which macOS and Windows do not tell
    apart) must not overwrite each other's outputs, nor look alike in the report."""
    stems = [p.stem for p in paths]
    if len({s.casefold() for s in stems}) == len(stems):
        return stems, [p.name for p in paths]
    return [f"{i + 1:02d}-{s}" for i, s in enumerate(stems)], [str(p) for p in paths]


@dataclass
class ReviewRun:
    reviews: list[GameReview]
    visits: int
    trust_visits: int
    checked: int  # positions re-searched at trust_visits
    interrupted: str | None = None  # "SIGINT"/"SIGTERM": cut short, the finished games kept

    def depth_text(self) -> str:
        text = f"{counted(self.visits, 'visit')} per position"
        if self.checked and self.visits < self.trust_visits:
            text += (f", the {self.checked} around the largest swings at "
                     f"{counted(self.trust_visits, 'visit')}")
        return text


async def _run(args: argparse.Namespace, games: list[tuple[Path, GameRecord]],
               budget: float | None, started: float) -> ReviewRun:
    """The review; cut short by Ctrl-C or SIGTERM, it returns what was done (``interrupted``
    set) instead of losing every game for the sake of the unfinished ones."""
    run = ReviewRun([GameReview(p, r, trust_visits=args.trust_visits) for p, r in games],
                    args.visits or 0, args.trust_visits, 0)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        if task is not None and not terminated:
            terminated = True
            task.cancel()

    # asyncio.run already turns the first Ctrl-C into a cancellation of this task (a second
    # one interrupts outright); SIGTERM (a service manager, `kill`) gets the same treatment.
    with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows; not the main thread
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await _review(args, run, games, budget, started)
    except asyncio.CancelledError:
        if task is not None:
            task.uncancel()
        run.interrupted = "SIGTERM" if terminated else "SIGINT"
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
    return run


async def _review(args: argparse.Namespace, run: ReviewRun, games: list[tuple[Path, GameRecord]],
                  budget: float | None, started: float) -> None:
    positions = sum(r.positions for r in run.reviews)
    model = args.model if args.connect is not None else None
    with ProgressReport(err, transient=args.json) as report:
        report.note("connecting to the daemon" if args.connect is not None
                    else "starting the engine")
        if args.connect is not None:
            client = await AsyncClient.connect(args.connect or None, token=args.token,
                                               token_file=args.token_file)
        else:
            from katapool.pool import Pool

            pool = Pool.embedded(args.model, members=args.members, gpus=args.gpus,
                                 preset=args.preset, katago=args.katago, batch=True)
            client = AsyncClient(EmbeddedChannel(pool, own=True))
        try:
            await client.open()  # inside the try: a pool interrupted while starting is stopped
            checks = args.checks if args.checks is not None else 2 * args.top
            if budget is not None:
                speed = await measure_speed(client, games, model)
                left = budget - (time.monotonic() - started) - WRAP_UP_SECONDS
                if left <= 0:
                    raise ConfigError(f"--time {args.time} is spent before the review could start "
                                      f"(starting the engine and measuring it took "
                                      f"{format_duration(time.monotonic() - started)})")
                plan = plan_review(positions, speed, left, args.trust_visits,
                                   args.checks if args.checks is not None else positions)
                visits, checks = plan.visits, plan.checks
                report.note(f"measured {speed.visits_per_second:.1f} visits/s "
                            f"({counted(speed.positions, 'position')} × "
                            f"{counted(speed.visits, 'visit')} in "
                            f"{speed.seconds:.1f} s); budget {format_duration(budget)}: "
                            f"{plan.describe()}")
                late = plan.estimate > left * 1.05
                report.note(("[bold yellow]warning:[/] this engine is too slow for the budget: "
                             if late else "")
                            + f"expected to take about {format_duration(plan.estimate)} more "
                            f"(done by {_clock(plan.estimate)})")
            else:
                visits = args.visits
                if visits >= args.trust_visits:
                    checks = 0
            run.visits = visits
            report.start(f"{counted(len(games), 'game')}, {counted(visits, 'visit')}/position",
                         positions)
            pass_started = time.monotonic()
            await fill_reviews(client, run.reviews, visits, report.advance, model=model)
            reviews = run.reviews
            if budget is not None and visits < args.trust_visits:
                # Re-fit the checks to the time left, at the speed the first pass really had
                # (the probe is short: a slower or faster machine shows here).
                rate = visits * positions / max(1e-3, time.monotonic() - pass_started)
                left = budget - (time.monotonic() - started) - WRAP_UP_SECONDS
                fitted = max(0, int(left * rate // (2 * args.trust_visits)))
                if args.checks is not None:
                    fitted = min(fitted, args.checks)
                if fitted != checks:
                    report.note(f"the first pass ran at {rate:.1f} visits/s: "
                                f"{counted(fitted, 'swing')} (planned: {checks}) "
                                f"fit in the {format_duration(max(0.0, left))} left")
                checks = fitted
            floor = args.mistake / 2  # a swing this size at few visits may be a mistake
            if not checks:
                plan_list = []
            elif budget is not None or args.checks is not None:  # the largest of all games
                plan_list = plan_checks(reviews, floor, checks)
            else:  # each game gets its own share
                plan_list = [p for r in reviews for p in plan_checks([r], floor, checks)]
            todo = sum(len(turns) for _, turns in plan_list)
            if todo:
                report.start(f"checking the largest swings at {counted(args.trust_visits, 'visit')}",
                             todo)

                def checked() -> None:  # counted as they come: an interrupted run says how many
                    run.checked += 1
                    report.advance()

                await deepen(client, plan_list, checked, model=model)
        finally:
            await client.close()


WRAP_UP_SECONDS = 5.0  # writing SGFs and graphs, stopping the engine


async def measure_speed(client: AsyncClient, games: list[tuple[Path, GameRecord]],
                        model: str | None) -> Speed:
    """Visits per second on real positions of the games, a few seconds' worth: rounds of
    positions at growing visits until one round takes long enough to time. Each round uses
    other positions, so the engine's cache does not flatter it."""
    path, record = max(games, key=lambda g: len(g[1].moves))
    turns = list(range(len(record.moves) + 1))
    step = max(1, len(turns) // (PROBE_POSITIONS * PROBE_ROUNDS))
    # The engine's first evaluations pay one-off costs (OpenCL kernels compiled and cached,
    # buffers allocated): one position first, untimed.
    async for _ in client.analyze_game(record, visits=1, turns=[turns[-1]], model=model):
        pass
    visits, offset = 1, 0
    while True:
        sample = turns[offset::step][:PROBE_POSITIONS] or turns[:PROBE_POSITIONS]
        offset = (offset + 1) % step if step > 1 else 0
        begun = time.monotonic()
        async for _ in client.analyze_game(record, visits=visits, turns=sample, model=model):
            pass
        seconds = time.monotonic() - begun
        if seconds >= PROBE_SECONDS or visits >= 256:
            return Speed(len(sample) * visits / seconds, len(sample), visits, seconds)
        visits *= 4


PROBE_POSITIONS = 8
PROBE_ROUNDS = 4
PROBE_SECONDS = 3.0


def _clock(seconds_from_now: float) -> str:
    return (datetime.now() + timedelta(seconds=seconds_from_now)).strftime("%H:%M")


def _as_json(review: GameReview, args: argparse.Namespace, run: ReviewRun, sgf_out: Path,
             png_out: Path | None) -> dict[str, Any]:
    record = review.record
    return {
        "game": str(review.source), "black": record.black, "white": record.white,
        "result": record.result, "visits": run.visits, "trustVisits": run.trust_visits,
        "sgf": str(sgf_out), "png": str(png_out) if png_out else None,
        "moves": [{"move": m.number, "player": m.player, "vertex": m.move,
                   "winrateBlack": round(m.after.winrate_black, 4),
                   "scoreLeadBlack": round(m.after.score_lead_black, 2),
                   "winrateLoss": round(m.winrate_loss, 4), "scoreLoss": round(m.score_loss, 2),
                   "visits": min(m.before.visits, m.after.visits),
                   "mistake": review.severity(m, args.mistake) is not None,
                   "bestMove": m.before.best_move} for m in review.moves],
        "mistakes": [{"move": m.number, "player": m.player, "vertex": m.move,
                      "winrateLoss": round(m.winrate_loss, 4), "bestMove": m.before.best_move}
                     for m in review.mistakes(args.mistake, args.top)],
        "unchecked": [m.number for m in review.unchecked(args.mistake)],
    }


def _print_game(review: GameReview, label: str, args: argparse.Namespace, run: ReviewRun,
                sgf_out: Path, png_out: Path | None) -> None:
    record = review.record
    title = f"{record.black} (B) vs {record.white} (W)" + (f", {record.result}" if record.result else "")
    rule = (f"? and ?? (losses of {args.mistake:.0%} and {2 * args.mistake:.0%}) only where both "
            f"positions had {run.trust_visits}+ visits")
    if not args.brief:
        table = Table(title=f"{escape(label)}: {escape(title)}",
                      caption=f"{run.depth_text()}; winrate and score from Black's view; {rule}")
        for col in ("move", "", "played", "B winrate", "B score", "loss", "visits", "engine's choice"):
            table.add_column(col, justify="right" if col in ("move", "B winrate", "B score", "loss",
                                                             "visits") else "left")
        for m in review.moves:
            severity = review.severity(m, args.mistake)
            flag = {"blunder": " [red]??[/]", "mistake": " [yellow]?[/]", None: ""}[severity]
            table.add_row(str(m.number), m.player, m.move, f"{m.after.winrate_black:6.1%}",
                          f"{m.after.score_lead_black:+6.1f}", f"{m.winrate_loss:+.1%}{flag}",
                          str(min(m.before.visits, m.after.visits)), m.before.best_move or "")
        out.print(table)
    else:
        out.print(f"[bold]{escape(label)}[/]: {escape(title)}")
    worst = review.mistakes(args.mistake, args.top)
    if worst:
        out.print(f"  biggest mistakes (checked at {run.trust_visits}+ visits): " + ", ".join(
            f"{m.number}.{m.player} {m.move} (−{m.winrate_loss:.0%}"
            + (f", best {m.before.best_move})" if m.before.best_move else ")") for m in worst))
    else:
        out.print(f"  no move checked at {run.trust_visits}+ visits lost {args.mistake:.0%} "
                  "winrate or more")
    unchecked = review.unchecked(args.mistake)
    if unchecked:
        out.print(f"  {counted(len(unchecked), 'more swing')} of {args.mistake:.0%}+ seen at fewer visits, "
                  f"not flagged (too shallow to judge): moves "
                  + ", ".join(str(m.number) for m in unchecked[:12]) + (" …" if len(unchecked) > 12 else ""))
    out.print(escape(f"  annotated SGF: {sgf_out}" + (f"   graph: {png_out}" if png_out else "")))
