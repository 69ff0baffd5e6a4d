"""The game state a GUI has set up in the engine, kept so that a restarted engine can be put
back exactly where the GUI left it.

Settings (board size, rules, komi, time settings, parameters) are kept as the last command of
each kind, replayed in the order they were last set; the position is the list of commands
since the last reset (``clear_board``, a board size change), with ``undo`` taking one back
and generated moves recorded as the ``play`` they became.

``loadsgf`` is a setting too (it sets size, komi, rules and the board on top of what was set
before it, and what is set after it overrides it), kept in its place in that order; the
board it loaded stays until the next reset, and an ``undo`` of one of its moves is replayed
as such.
"""

from __future__ import annotations

import re
from collections import OrderedDict

from katapool.gtp.command import Command

_COLOURS = {"b": "B", "black": "B", "w": "W", "white": "W"}
_GENMOVES = {"genmove", "genmove_debug", "lz-genmove_analyze", "kata-genmove_analyze",
             "genmove_analyze"}


class GameState:
    def __init__(self) -> None:
        self.settings: OrderedDict[str, str] = OrderedDict()
        self.position: list[str] = []
        self.board_from_sgf = False  # the board is the last loadsgf's (plus self.position)
        self.size: tuple[int, int] | None = None  # the board's, where known

    def _set(self, key: str, line: str) -> None:
        self.settings.pop(key, None)
        self.settings[key] = line

    def record(self, command: Command, ok: bool, body: str, played: str | None = None) -> None:
        """Take note of a command the engine answered (``body``: the reply text after '=';
        ``played``: the move a genmove_analyze reported on its ``play`` line)."""
        if not ok:
            return
        name, args = command.name, list(command.args)
        text = " ".join([name, *args])
        if name in ("boardsize", "rectangular_boardsize"):
            size = _size(args)
            if size is None or size != self.size:  # KataGo keeps the stones at the same size
                self._reset_board()
            self.size = size
            self._set("size", text)
        elif name in ("kata-set-rules", "kgs-rules"):
            self._set("rules", text)
            for key in [k for k in self.settings if k.startswith("rule:")]:
                del self.settings[key]
        elif name == "kata-set-rule" and args:
            self._set(f"rule:{args[0].lower()}", text)
        elif name == "komi":
            self._set("komi", text)
        elif name in ("time_settings", "kgs-time_settings", "kata-time_settings"):
            self._set("time", text)
        elif name == "time_left" and args:
            self._set(f"time_left:{_COLOURS.get(args[0].lower(), args[0])}", text)
        elif name == "kata-set-param" and args:
            self._set(f"param:{args[0]}", text)
        elif name in ("kata-set-params",):
            self._set(f"params:{len(self.settings)}", text)
        elif name == "clear_board":
            self._reset_board()
        elif name == "loadsgf":
            self.size = _sgf_size(args[0]) if args else None
            self._set("sgf", text)
            self.position = []
            self.board_from_sgf = True
        elif name in ("play", "set_free_handicap", "set_position"):
            if name == "set_position":
                self._reset_board()
            self.position.append(text)
        elif name in ("fixed_handicap", "place_free_handicap"):
            stones = body.split()
            if stones:
                self.position.append("set_free_handicap " + " ".join(stones))
        elif name == "undo":
            for i in range(len(self.position) - 1, -1, -1):
                if self.position[i].startswith("play "):
                    del self.position[i]
                    break
            else:
                if self.board_from_sgf:  # it took back a move of the loaded game
                    self.position.append("undo")
        elif name in _GENMOVES:
            move = played if played is not None else body.strip()
            colour = _COLOURS.get(args[0].lower()) if args else None
            colour = colour or self.to_move()
            if colour and move and move.lower() not in ("resign", "cancelled"):
                self.position.append(f"play {colour} {move}")

    def _reset_board(self) -> None:
        self.position = []
        self.board_from_sgf = False

    def to_move(self) -> str:
        """The side to move, as KataGo decides it when a command names none."""
        for line in reversed(self.position):
            words = line.split()
            if words[0] == "play" and len(words) > 1:
                return "W" if _COLOURS.get(words[1].lower()) == "B" else "B"
            if words[0] == "set_free_handicap":
                return "W"
        return "B"

    def replay(self) -> list[str]:
        """Commands that rebuild this state in a freshly started engine."""
        board = [] if self.board_from_sgf else ["clear_board"]
        return [*self.settings.values(), *board, *self.position]


def _size(args: list[str]) -> tuple[int, int] | None:
    """The size a boardsize command sets (``N``, ``X Y``, ``X:Y``)."""
    parts = args[0].split(":") if len(args) == 1 else args
    if len(parts) == 1:
        parts = parts * 2
    try:
        x, y = (int(p) for p in parts)
    except ValueError:
        return None
    return x, y


def _sgf_size(path: str) -> tuple[int, int] | None:
    """The board size of an SGF file (19 where it names none), None where it cannot be read."""
    try:
        with open(path, "rb") as sgf:
            head = sgf.read(1 << 16).decode("ascii", errors="replace")
    except OSError:
        return None
    found = re.search(r"SZ\[\s*(\d+)\s*(?::\s*(\d+)\s*)?\]", head)
    if not found:
        return (19, 19)
    x = int(found.group(1))
    return x, int(found.group(2) or x)
