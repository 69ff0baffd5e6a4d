"""A Go position as KataGo's analysis queries describe it: rules, komi, board, setup stones
and the moves played, from a move list, SGF text or an SGF file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from katapool.errors import GameRecordError
from katapool.game.record import GTP_COLUMNS, GameRecord, load_sgf, parse_sgf

RULES = ("chinese", "japanese", "korean", "aga", "new-zealand", "tromp-taylor", "stone-scoring",
         "bga", "aga-button")


def handicap_stones(count: int, size: int = 19) -> list[str]:
    """The standard fixed handicap placement (as GTP's ``fixed_handicap``).

    >>> handicap_stones(4)
    ['D4', 'Q16', 'D16', 'Q4']
    >>> handicap_stones(5, 9)
    ['C3', 'G7', 'C7', 'G3', 'E5']
    """
    if count == 0:
        return []
    edge = 4 if size >= 13 else 3
    most = 4 if size % 2 == 0 or size == 7 else 9
    if size < 7 or count < 2 or count > most:
        raise GameRecordError(f"no standard placement for {count} handicap stones on {size}x{size}")
    lo, hi, mid = edge, size - edge + 1, (size + 1) // 2

    def v(col: int, row: int) -> str:
        return f"{GTP_COLUMNS[col - 1]}{row}"

    corners = [v(lo, lo), v(hi, hi), v(lo, hi), v(hi, lo)]
    sides = [v(lo, mid), v(hi, mid), v(mid, lo), v(mid, hi)]
    stones = corners[:min(count, 4)]
    if count >= 6:
        stones += sides[:2] if count < 8 else sides
    if count % 2 and count >= 5:
        stones.append(v(mid, mid))
    return stones


@dataclass(frozen=True)
class Position:
    """Everything KataGo needs to analyse a position.

    >>> p = Position.from_moves(["Q16", "D4"], komi=6.5, rules="japanese")
    >>> p.query()["moves"], p.next_player
    ([['B', 'Q16'], ['W', 'D4']], 'B')
    """

    moves: tuple[tuple[str, str], ...] = ()
    size: int = 19
    komi: float = 7.5
    rules: str = "chinese"
    initial_stones: tuple[tuple[str, str], ...] = ()
    initial_player: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not 2 <= self.size <= 19:
            raise GameRecordError(f"board size {self.size}: KataGo plays 2x2 to 19x19")
        if self.rules not in RULES:
            raise GameRecordError(f"rules {self.rules!r}: expected one of {', '.join(RULES)}")

    @classmethod
    def from_moves(cls, moves: Sequence[str | tuple[str, str] | list[str]] = (), *, size: int = 19,
                   komi: float = 7.5, rules: str = "chinese", handicap: int = 0) -> Position:
        """Moves as GTP vertices (``"Q16"``, ``"pass"``), alternating from Black (from White
        after handicap stones), or as explicit ``("B", "Q16")`` pairs."""
        stones = tuple(("B", s) for s in handicap_stones(handicap, size))
        colour = "W" if stones else "B"
        played: list[tuple[str, str]] = []
        for move in moves:
            if isinstance(move, str):
                played.append((colour, move))
            else:
                c, vertex = move
                if c.upper() not in ("B", "W"):
                    raise GameRecordError(f"move {move!r}: colour must be B or W")
                colour = c.upper()
                played.append((colour, vertex))
            colour = "W" if colour == "B" else "B"
        return cls(tuple(played), size, float(komi), rules, stones, "W" if stones else None)

    @classmethod
    def from_record(cls, record: GameRecord, move_number: int | None = None) -> Position:
        moves = record.moves if move_number is None else record.moves[:move_number]
        if move_number is not None and not 0 <= move_number <= len(record.moves):
            raise GameRecordError(f"move {move_number}: the game has {len(record.moves)} moves")
        return cls(tuple(moves), record.size, record.komi, record.rules,
                   tuple(record.initial_stones), record.initial_player)

    @classmethod
    def from_sgf(cls, source: str | bytes | Path, move_number: int | None = None) -> Position:
        """From SGF text or a file; the position after ``move_number`` moves (default: all)."""
        return cls.from_record(game_record(source), move_number)

    @property
    def next_player(self) -> str:
        if self.moves:
            return "W" if self.moves[-1][0] == "B" else "B"
        return self.initial_player or "B"

    def play(self, *vertices: str) -> Position:
        """This position with more moves played, alternating from the side to move."""
        colour = self.next_player
        added = []
        for vertex in vertices:
            added.append((colour, vertex))
            colour = "W" if colour == "B" else "B"
        return replace(self, moves=self.moves + tuple(added))

    def query(self, **extra: Any) -> dict[str, Any]:
        q: dict[str, Any] = {"moves": [[c, m] for c, m in self.moves], "rules": self.rules,
                             "komi": self.komi, "boardXSize": self.size, "boardYSize": self.size}
        if self.initial_stones:
            q["initialStones"] = [[c, m] for c, m in self.initial_stones]
        if self.initial_player:
            q["initialPlayer"] = self.initial_player
        q.update(self.extra)
        q.update(extra)
        return q


def game_record(source: str | bytes | Path | GameRecord) -> GameRecord:
    """A game from a record, a path, SGF text or SGF bytes."""
    if isinstance(source, GameRecord):
        return source
    if isinstance(source, Path):
        return load_sgf(source)
    if isinstance(source, bytes):
        return parse_sgf(source)
    text = source.lstrip()
    if text.startswith("(") and ";" in text[:200]:  # SGF text, not a file named "(2) x.sgf"
        return parse_sgf(source.encode())
    return load_sgf(Path(source))
