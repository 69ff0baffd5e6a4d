"""Quick self-play games for checking an export when the user gives no games of their own.

The engine plays a few fast games with the network under test (a few visits per move, with
temperature so that games differ, and a random first move or two): real positions of the kind
the network will see, from the opening to the late middle game, at any board size."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from katapool.errors import EngineError

COLUMNS = "ABCDEFGHJKLMNOPQRST"


def _override(visits: int) -> str:
    return ",".join([f"maxVisits={visits}", "chosenMoveTemperatureEarly=1.0",
                     "chosenMoveTemperature=0.8", "chosenMoveTemperatureHalflife=80",
                     "allowResignation=false", "ponderingEnabled=false",
                     "rootPolicyOptimism=0", "logToStderr=false"])


class _GTP:
    def __init__(self, katago: Path, config: Path, model: Path, visits: int) -> None:
        self.proc = subprocess.Popen(
            [str(katago), "gtp", "-config", str(config), "-model", str(model),
             "-override-config", _override(visits)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def ask(self, command: str) -> str:
        from katapool.models.validate import gtp_ask

        return "\n".join(gtp_ask(self.proc, command))[1:].strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
                self.proc.wait(30)
            except (EngineError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def selfplay_games(katago: Path, config: Path, model: Path, games: int, moves: int, board: int,
                   workdir: Path, seed: int = 5, visits: int = 2,
                   on_move: object = None) -> list[Path]:
    """``games`` SGF files of up to ``moves`` moves each, under Chinese rules."""
    rng = random.Random(seed)
    gtp = _GTP(katago, config, model, visits)
    paths = []
    try:
        gtp.ask(f"boardsize {board}")
        gtp.ask("kata-set-rules chinese")
        for g in range(games):
            gtp.ask("clear_board")
            gtp.ask("komi 7.5")
            color = "B"
            taken: set[str] = set()
            for _ in range(1 + g % 2):  # a random first move or two: every game differs
                point = f"{COLUMNS[rng.randrange(board)]}{rng.randrange(board) + 1}"
                if point not in taken:
                    gtp.ask(f"play {color} {point}")
                    taken.add(point)
                    color = "W" if color == "B" else "B"
            passes = 0
            for _ in range(moves - len(taken)):
                move = gtp.ask(f"genmove {color}")
                passes = passes + 1 if move.lower() == "pass" else 0
                color = "W" if color == "B" else "B"
                if callable(on_move):
                    on_move()
                if passes >= 2:
                    break
            path = workdir / f"selfplay-{g:02d}.sgf"
            path.write_text(gtp.ask("printsgf"))
            paths.append(path)
    finally:
        gtp.close()
    return paths
